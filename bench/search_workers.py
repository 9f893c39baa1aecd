"""The search stage with every candidate scored in its own process against random search's candidates scored ahead
in worker processes (`search.workers`, groundwork.search.fanout), side by side in one run: seconds, the ratio, each
method's best reward and widths both ways, and how many of the candidates' rewards differ.

The search is the stage's (`groundwork.search.fanout.search_methods` under the stage's budget), on a project's
outputs after a run (models/transfer.pt, data/processed/target.npz, reports/latency.csv), at its params. One
process scores on all of torch's threads; workers share them (two workers on two threads: a thread each), so the
arithmetic differs and a reward may move by an image now and then, not by a fixed rule.
Usage: PYTHONPATH=. .venv/bin/python bench/search_workers.py --project DIR [--workers auto]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from groundwork.data.datasets import load_dataset
from groundwork.models.checkpoint import load_model
from groundwork.params import load_params
from groundwork.search.compare import search_budget
from groundwork.search.fanout import SEARCH_SPLITS, search_methods
from groundwork.search.latency import read_latency_table
from groundwork.search.methods import SearchResult
from groundwork.training.distributed import resolve_device
from groundwork.training.jobs import worker_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="a project folder after a pipeline run")
    parser.add_argument("--workers", default="auto", help="worker processes of the second run (default auto)")
    args = parser.parse_args()
    params = load_params(args.project / "params.yaml")
    setting = args.workers if args.workers == "auto" else int(args.workers)
    workers = worker_count(setting, params.search.episodes, resolve_device(params.device))
    print(f"reward {params.search.reward}, {params.search.episodes} episodes per method; torch threads "
          f"{torch.get_num_threads()}; second run: {workers} worker processes, "
          f"{max(1, torch.get_num_threads() // workers)} thread(s) each", flush=True)
    transferred = args.project / "models/transfer.pt"
    target = args.project / "data/processed/target.npz"
    model, _ = load_model(transferred)
    data, _ = load_dataset(target, splits=SEARCH_SPLITS)
    budget = search_budget(params, read_latency_table(args.project / "reports/latency.csv"))
    runs = {"one process": 1, "workers": workers}
    seconds: dict[str, float] = {}
    results: dict[str, dict[str, SearchResult]] = {}
    for name, count in runs.items():
        started = time.perf_counter()
        results[name] = search_methods(params, model, data, transferred=transferred, target=target, budget=budget,
                                       workers=count)
        seconds[name] = time.perf_counter() - started
        print(f"  {name:12s} {seconds[name]:7.1f} s", flush=True)
    print(f"  workers against one process: {seconds['one process'] / seconds['workers']:.2f}x faster\n")
    print("| method | best reward, one process | widths | best reward, workers | widths |")
    print("| --- | --- | --- | --- | --- |")
    for method, one in results["one process"].items():
        fanned = results["workers"][method]
        print(f"| {method} | {100 * one.best_reward:.2f} | {list(one.widths[one.best])} | "
              f"{100 * fanned.best_reward:.2f} | {list(fanned.widths[fanned.best])} |")
    for method in ("random", "agent"):
        one, fanned = (results[name][method].rewards for name in runs)
        differ = sum(a != b for a, b in zip(one, fanned, strict=True))
        print(f"{method}: {differ} of {len(one)} candidates' rewards differ")


if __name__ == "__main__":
    main()
