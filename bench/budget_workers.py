"""The budget sweep's draws in one process against the same draws in worker processes (`budget.workers`), side by
side in one run: seconds, the ratio, and each draw's test accuracies both ways.

One process trains each draw on all of torch's threads; workers share them (two workers on two threads: a thread
each), so the arithmetic differs and accuracies move within noise, not by a fixed rule. The sweep is the budget
stage's own (groundwork.training.label_budget.sweep), on a project's outputs after a run (models/pretrained.pt and
data/processed/target.npz), at its params except the budgets and draws given here.
Usage: PYTHONPATH=. .venv/bin/python bench/budget_workers.py --project DIR [--budgets 10 20] [--draws 2]
       [--workers auto]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from groundwork.data.datasets import load_dataset
from groundwork.params import load_params
from groundwork.tracking.runs import NullTracker
from groundwork.training.distributed import resolve_device
from groundwork.training.jobs import worker_count
from groundwork.training.label_budget import METHODS, draws, sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="a project folder after a pipeline run")
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 20], help="labels per class (default 10 20)")
    parser.add_argument("--draws", type=int, default=2, help="draws per budget (default 2)")
    parser.add_argument("--workers", default="auto", help="worker processes of the second run (default auto)")
    args = parser.parse_args()
    params = load_params(args.project / "params.yaml")
    target, _ = load_dataset(args.project / "data" / "processed" / "target.npz", splits=("pool", "val", "test"))
    pretrained = args.project / "models" / "pretrained.pt"
    setting = args.workers if args.workers == "auto" else int(args.workers)
    sections = {"one process": params.budget.model_copy(update={"labels_per_class": args.budgets,
                                                                 "draws": args.draws, "workers": 1})}
    sections["workers"] = sections["one process"].model_copy(update={"workers": setting})
    jobs = len(draws(pretrained, target, params.model_copy(update={"budget": sections["workers"]})))
    workers = worker_count(setting, jobs, resolve_device(params.device))
    print(f"{jobs} draws, {params.budget.steps} steps per model; torch threads {torch.get_num_threads()}; "
          f"second run: {workers} worker processes, {max(1, torch.get_num_threads() // workers)} thread(s) each")
    seconds, rows = {}, {}
    for name, section in sections.items():
        started = time.perf_counter()
        rows[name] = sweep(pretrained, target, params.model_copy(update={"budget": section}), NullTracker())
        seconds[name] = time.perf_counter() - started
        print(f"  {name:12s} {seconds[name]:7.1f} s", flush=True)
    print(f"  workers against one process: {seconds['one process'] / seconds['workers']:.2f}x faster")
    columns = ["budget", "draw", *(f"{method}_accuracy" for method in METHODS)]
    both = pd.merge(rows["one process"][columns], rows["workers"][columns], on=["budget", "draw"],
                    suffixes=(" (one)", " (workers)"))
    print((both.set_index(["budget", "draw"]) * 100).round(2).to_string())


if __name__ == "__main__":
    main()
