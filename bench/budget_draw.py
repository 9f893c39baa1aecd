"""Where the budget sweep's time goes: one draw of the sweep (the budget stage's own code, groundwork.training
.label_budget), each method's seconds and test accuracy, at the project's params, on a project's outputs after a run
(models/pretrained.pt and data/processed/target.npz).

With `--threads 1` the draw runs on one thread: beside the default (torch's thread count), it shows what running two
draws at once, a thread each, could gain on two cores. Seconds include each model's test scoring; the first method
of a process also pays torch's first-call costs.
Usage: PYTHONPATH=. .venv/bin/python bench/budget_draw.py --project DIR [--labels-per-class N] [--threads T]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from groundwork.data.datasets import load_dataset
from groundwork.data.splits import label_budget
from groundwork.params import load_params
from groundwork.training.label_budget import DRAW_SEED_STRIDE, budget_params, method_params
from groundwork.training.transfer_learning import from_scratch, target_test_accuracy, transfer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="a project folder after a pipeline run")
    parser.add_argument("--labels-per-class", type=int, default=10, help="the draw's budget (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.project / "params.yaml")
    pretrained = args.project / "models" / "pretrained.pt"
    target, _ = load_dataset(args.project / "data" / "processed" / "target.npz", splits=("pool", "val", "test"))
    seed = params.seed + DRAW_SEED_STRIDE  # the sweep's first draw
    train = label_budget(target["pool"], args.labels_per_class, seed=seed, key="--labels-per-class")
    data = {**target, "train": train}
    sized = budget_params(params, len(train))
    print(f"{torch.get_num_threads()} threads; {len(train)} labelled images, {params.budget.steps} steps per model "
          f"({sized.transfer.epochs} epochs of batch {sized.transfer.batch_size})")
    methods = {
        "scratch": lambda: from_scratch(data, sized, seed=seed, validated=False)[0],
        "transfer": lambda: transfer(pretrained, data, method_params(sized, "transfer"), seed=seed,
                                     validated=False)[0],
        "semi_supervised": lambda: transfer(pretrained, data, method_params(sized, "semi_supervised"), seed=seed,
                                            validated=False)[0],
    }
    total = 0.0
    for name, train_model in methods.items():
        started = time.perf_counter()
        accuracy = target_test_accuracy(train_model(), data, sized)
        seconds = time.perf_counter() - started
        total += seconds
        print(f"  {name:16s} {seconds:6.1f} s   test accuracy {100 * accuracy:.2f}%")
    print(f"  the draw         {total:6.1f} s")


if __name__ == "__main__":
    main()
