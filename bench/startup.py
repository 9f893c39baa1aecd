"""What a stage pays before its first line of work, side by side in one run: each stage module imported in a fresh
Python process (as DVC starts it), against the floor every stage shares (`import torch, mlflow`: each stage trains
or scores with torch and records an MLflow run) and against a bare interpreter.

Prints the median seconds of `--repeats` fresh processes per module, the excess over the floor, and the heaviest
packages `python -X importtime` charges to each module (cumulative, as first imported there). Also `groundwork
--help` (the command's entry point, `flows.cli`), against the bare interpreter: it must not pay the floor.
Usage: PYTHONPATH=. .venv/bin/python bench/startup.py [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from groundwork.project import ROOT

STAGES = ("ingest", "augment", "pretrain", "transfer", "budget", "search", "compress", "evaluate", "monitor", "ask",
          "adapt")
HEAVY = ("torch", "mlflow", "sklearn", "scipy", "pandas", "matplotlib", "onnx", "onnxruntime", "onnxscript",
         "torchvision", "mlxtend", "PIL")


def seconds(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def heaviest(module: str, count: int = 4) -> str:
    """The top-level packages with the largest cumulative import time in one `-X importtime` run."""
    trace = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stderr
    costs = {}
    for line in trace.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() in HEAVY:
            costs[parts[2].strip()] = int(parts[1]) / 1e6
    top = sorted(costs.items(), key=lambda item: -item[1])[:count]
    return ", ".join(f"{name} {cost:.2f}" for name, cost in top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per module (median reported)")
    args = parser.parse_args()
    codes = {"python (bare)": "pass", "floor: torch + mlflow": "import torch, mlflow",
             "groundwork --help": "import contextlib, io, flows.cli\nwith contextlib.redirect_stdout(io.StringIO()):"
                                  "\n    try: flows.cli.main(['--help'])\n    except SystemExit: pass",
             **{f"tasks.{stage}": f"import tasks.{stage}" for stage in STAGES}}
    timings: dict[str, list[float]] = {name: [] for name in codes}
    for _ in range(args.repeats):  # interleaved, so every module sees the same machine load
        for name, code in codes.items():
            timings[name].append(seconds(code))
    medians = {name: statistics.median(values) for name, values in timings.items()}
    floor, bare = medians["floor: torch + mlflow"], medians["python (bare)"]
    print(f"median of {args.repeats} fresh processes per module; floor = `import torch, mlflow` = {floor:.2f} s")
    print(f"groundwork --help: {medians['groundwork --help']:.2f} s, {medians['groundwork --help'] - bare:+.2f} s over "
          f"a bare interpreter, {medians['groundwork --help'] / floor:.2f}x the floor")
    for name, value in medians.items():
        extra = f"{value - floor:+6.2f} s over the floor, {value / floor:.2f}x" if name.startswith("tasks.") else ""
        print(f"  {name:24s} {value:6.2f} s  {extra}")
        if name.startswith("tasks."):
            print(f"  {'':24s} heaviest imports (s): {heaviest(name)}")


if __name__ == "__main__":
    main()
