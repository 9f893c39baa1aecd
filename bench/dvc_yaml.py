"""DVC's fixed cost with ruamel.yaml parsing in C (libyaml, from ruamel.yaml.clib, a dependency of this project)
against the pure-Python parser ruamel.yaml falls back to without it, side by side in one run.

Each round runs the same DVC commands in a new process both ways, interleaved; the pure-Python way hides
ruamel.yaml.clib from the process, nothing else differs. DVC parses params.yaml, dvc.yaml and dvc.lock with the safe
loader several times per stage (56 params reads in a tiny `dvc repro` of the 8 stages, by cProfile). Then, where the
project has a dvc.lock, the flow's own read of it (flows.repro.lock_hash, before and after every stage): PyYAML's
C loader against its Python one. Prints medians.
Usage: PYTHONPATH=. .venv/bin/python bench/dvc_yaml.py [--project DIR] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from groundwork.project import ROOT

DVC = "import sys; from dvc.cli import main; sys.exit(main(sys.argv[1:]))"
WAYS = {"C (ruamel.yaml.clib)": DVC, "pure Python": "import sys; sys.modules['_ruamel_yaml'] = None; " + DVC}
COMMANDS = (["status"], ["repro", "--dry"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=ROOT, help="a DVC project (default: this one)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args()
    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for way, code in WAYS.items():
            for command in COMMANDS:
                started = time.perf_counter()
                subprocess.run([sys.executable, "-c", code, *command], cwd=args.project, check=True,
                               capture_output=True)
                seconds.setdefault((way, " ".join(command)), []).append(time.perf_counter() - started)
    print(f"{args.project}: medians of {args.rounds} rounds, each command a new process")
    for command in COMMANDS:
        name = " ".join(command)
        fast, slow = (statistics.median(seconds[way, name]) for way in WAYS)
        print(f"  dvc {name:12s} C {fast:5.2f} s, pure Python {slow:5.2f} s: {slow / fast:4.2f}x")
    lock = args.project / "dvc.lock"
    if lock.exists():
        text = lock.read_text()
        parse = {}
        for loader in (yaml.CSafeLoader, yaml.SafeLoader):
            times = []
            for _ in range(10):
                started = time.perf_counter()
                yaml.load(text, Loader=loader)
                times.append(time.perf_counter() - started)
            parse[loader] = statistics.median(times)
        fast, slow = parse[yaml.CSafeLoader], parse[yaml.SafeLoader]
        print(f"  PyYAML, dvc.lock ({len(text):,} characters): C {1000 * fast:.1f} ms, Python {1000 * slow:.1f} ms: "
              f"{slow / fast:4.1f}x")


if __name__ == "__main__":
    main()
