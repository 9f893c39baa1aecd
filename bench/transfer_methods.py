"""Few-shot transfer, method by method, side by side in one run: for each head initialisation (a new head, or the
source's head kept), the label-budget sweep of the budget stage (from scratch, transfer, and transfer that also
learns from the unlabelled pool with FixMatch; every model the same optimizer steps), at a few budgets and
several draws, beside the pretrained model's own accuracy (source-only). Prints mean ± std per budget and
method, and the wall time of each sweep. Needs the pretrained model and the target dataset of a pipeline run
(`make run`). Usage: PYTHONPATH=. .venv/bin/python bench/transfer_methods.py [--budgets 1 5 10] [--draws 3]
[--heads new keep] [--set transfer.semi_supervised.ratio=7 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from groundwork.data.datasets import load_dataset
from groundwork.params import read_raw_params, with_overrides
from groundwork.tracking.runs import NullTracker
from groundwork.training.label_budget import METHODS, summarise, sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 5, 10], help="labelled images per class")
    parser.add_argument("--draws", type=int, default=3, help="labelled sets drawn per budget")
    parser.add_argument("--heads", nargs="+", default=["new", "keep"], choices=["new", "keep"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param of params.yaml for every sweep")
    parser.add_argument("--pretrained", type=Path, default=Path("models/pretrained.pt"))
    parser.add_argument("--target", type=Path, default=Path("data/processed/target.npz"))
    args = parser.parse_args()
    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.overrides)}
    target, _ = load_dataset(args.target, splits=("pool", "val", "test"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; budgets {args.budgets}, "
          f"{args.draws} draws each; overrides {overrides or 'none'}")
    for head in args.heads:
        params = with_overrides(read_raw_params(), {**overrides, "transfer.head": head,
                                                    "budget.labels_per_class": args.budgets,
                                                    "budget.draws": args.draws})
        started = time.perf_counter()
        summary = summarise(sweep(args.pretrained, target, params, NullTracker()))
        seconds = time.perf_counter() - started
        print(f"\nhead: {head}; {params.budget.steps} steps per model; sweep {seconds:.0f} s")
        print("| labels/class | source-only | " + " | ".join(METHODS) + " |")
        print("| --- | --- | " + " | ".join("---" for _ in METHODS) + " |")
        for _, row in summary.iterrows():
            cells = [f"{100 * row[f'{name}_accuracy_mean']:.1f} ± {100 * row[f'{name}_accuracy_std']:.1f}"
                     for name in ("source_only", *METHODS)]
            print(f"| {row['budget']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
