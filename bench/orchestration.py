"""Orchestration overhead, side by side in one run, each on a fresh copy of the project:

  direct  every stage's entry point called in one Python process, in DVC's order: no DVC, no Prefect
  dvc     plain `dvc repro`: every stage a new Python process that imports torch, MLflow and the rest again
  warm    `groundwork repro` (`make repro`): the same `dvc repro`, its stages forked from a warm stage server
          (groundwork.forkserver), the server's start included
  flow    the Prefect flow, `python -m flows.pipeline` (its temporary server's start and its stage server's
          included)

then a `dvc repro` and a flow run when nothing has changed. Prints seconds and the ratios to direct.
With `--ways`, only those (direct always): at the project's params each way is a whole pipeline run (about
20 minutes on two cores), so `--params project --ways direct warm flow` leaves the cold `dvc repro` out.
Usage: PYTHONPATH=. .venv/bin/python bench/orchestration.py [--params tiny|project] [--ways dvc warm flow]
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from flows.repro import stage_environment, stage_order
from groundwork.forkserver import SERVER_ENV
from groundwork.project import copy_project, project_params_dict, tiny_params_dict

WAYS = ("direct", "dvc", "warm", "flow")


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run_direct(root: Path) -> None:
    """Each stage's main() with the arguments of its dvc.yaml command, in this process."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    previous = Path.cwd()
    os.chdir(root)
    try:
        for name in stage_order(root):
            _python, _dash_m, module, *args = shlex.split(stages[name]["cmd"])
            if importlib.import_module(module).main(args) != 0:
                raise SystemExit(f"stage {name} failed")
    finally:
        os.chdir(previous)


def run_command(root: Path, *command: str) -> None:
    """`command` in `root`, with no stage server inherited from outside (the flow and `groundwork repro` start
    their own; plain `dvc repro` runs every stage cold)."""
    env = {key: value for key, value in stage_environment({}).items() if key != SERVER_ENV}
    result = subprocess.run(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {root} (exit {result.returncode}):\n{result.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", choices=["tiny", "project"], default="tiny",
                        help="tiny: the test suite's sizes (fixed costs dominate); project: params.yaml")
    parser.add_argument("--ways", nargs="+", choices=WAYS[1:], default=list(WAYS[1:]),
                        help="the ways timed against direct (default: all)")
    args = parser.parse_args()
    ways = ["direct", *(way for way in WAYS[1:] if way in args.ways)]
    params = tiny_params_dict() if args.params == "tiny" else project_params_dict()
    commands = {"dvc": [sys.executable, "-m", "dvc", "repro"],
                "warm": [sys.executable, "-m", "flows.cli", "repro"],
                "flow": [sys.executable, "-m", "flows.pipeline"]}
    with tempfile.TemporaryDirectory() as scratch:
        roots = {}
        for name in ways:
            (Path(scratch) / name).mkdir()
            roots[name] = copy_project(Path(scratch) / name, params)
        cold = {"direct": timed(lambda: run_direct(roots["direct"]))}
        for name in ways[1:]:
            cold[name] = timed(lambda name=name: run_command(roots[name], *commands[name]))
            print(f"  ({name} done in {cold[name]:.1f} s)", flush=True)
        unchanged = {name: timed(lambda name=name: run_command(roots[name], *commands[name]))
                     for name in ("dvc", "flow") if name in ways}
    print(f"params: {args.params}; cold run, every stage executes:")
    for name, seconds in cold.items():
        print(f"  {name:7s} {seconds:7.1f} s   {seconds / cold['direct']:.2f}x direct")
    if {"flow", "warm"} <= cold.keys():
        print(f"  flow over warm dvc repro: {100 * (cold['flow'] / cold['warm'] - 1):+.1f}%")
    if unchanged:
        print("nothing changed:")
        print("  " + "; ".join(f"{'dvc repro' if name == 'dvc' else 'flow run'} {seconds:.1f} s"
                               for name, seconds in unchanged.items())
              + (" (the flow's server start included)" if "flow" in unchanged else ""))

if __name__ == "__main__":
    main()
