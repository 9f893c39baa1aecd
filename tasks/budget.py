"""budget: the label-budget curve. At each labels-per-class budget, several labelled sets are drawn from
the target's training pool; on each, transfer and from-scratch train for the same number of optimizer
steps. Mean and spread of both accuracies are reported and plotted against the budget."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from groundwork.data.atomic import atomic_path
from groundwork.data.datasets import Dataset, load_dataset
from groundwork.data.splits import label_budget
from groundwork.entrypoint import stage_cli
from groundwork.params import Params
from groundwork.plots import budget_curve
from groundwork.tracking.runs import NullTracker, Tracker
from groundwork.training.loop import steps_per_epoch
from groundwork.training.transfer_learning import transfer_and_scratch

log = logging.getLogger(__name__)
DRAW_SEED_STRIDE = 1000  # seeds of successive draws: far apart, reproducible


def budget_params(params: Params, train_images: int) -> Params:
    """Transfer params with epochs set so that one model takes `budget.steps` optimizer steps."""
    cfg = params.transfer
    epochs = max(1, math.ceil(params.budget.steps / steps_per_epoch(train_images, cfg.batch_size)))
    freeze = min(cfg.freeze_epochs, epochs - 1)
    transfer = cfg.model_copy(update={"epochs": epochs, "freeze_epochs": freeze, "warmup_epochs": 0})
    return params.model_copy(update={"transfer": transfer})


def sweep(pretrained: Path, target: Dataset, params: Params, tracker: Tracker) -> pd.DataFrame:
    """One row per (budget, draw): the draw's size, and source-only, scratch and transfer accuracy."""
    rows = []
    for per_class in params.budget.labels_per_class:
        draws = 1 if per_class is None else params.budget.draws  # the whole pool has one possible draw
        for draw in range(draws):
            seed = params.seed + DRAW_SEED_STRIDE * (draw + 1)
            train = label_budget(target["pool"], per_class, seed=seed, key="budget.labels_per_class")
            data = {"train": train, "val": target["val"], "test": target["test"]}
            _, scores, _ = transfer_and_scratch(pretrained, data, budget_params(params, len(train)), seed=seed)
            label = "all" if per_class is None else per_class
            log.info("labels/class %s, draw %d: scratch %.4f, transfer %.4f", label, draw + 1,
                     scores["scratch_accuracy"], scores["transfer_accuracy"])
            rows.append({"labels_per_class": len(train) // 10 if per_class is None else per_class,
                         "budget": str(label), "draw": draw + 1, "train_images": len(train), **scores})
            tracker.log_metrics({f"budget_{label}_transfer_accuracy": scores["transfer_accuracy"],
                                 f"budget_{label}_scratch_accuracy": scores["scratch_accuracy"]}, step=draw + 1)
    return pd.DataFrame(rows)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per budget: mean and standard deviation over draws (0 where there is one draw)."""
    grouped = results.groupby(["labels_per_class", "budget"], sort=True)
    summary = grouped[["scratch_accuracy", "transfer_accuracy", "gain_points"]].agg(["mean", "std"]).fillna(0.0)
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    return summary.reset_index().assign(draws=grouped.size().to_numpy())


def run(params: Params, *, pretrained: Path, target: Path, table_out: Path, curve_out: Path,
        tracker: Tracker | None = None) -> dict[str, Any]:
    """Sweep the budgets; write the per-budget table (CSV) and the curve (PNG); return the summary."""
    tracker = tracker or NullTracker()
    data, digest = load_dataset(target, splits=("pool", "val", "test"))
    tracker.log_dataset("target", target, digest, context="input")
    summary = summarise(sweep(pretrained, data, params, tracker))
    with atomic_path(table_out) as tmp:
        summary.to_csv(tmp, index=False)
    budget_curve(curve_out, summary)
    tracker.log_artifact(curve_out, "plots")
    tracker.log_artifact(table_out, "budget")
    return {"steps_per_model": params.budget.steps,
            "budgets": {row.budget: {"labels_per_class": int(row.labels_per_class), "draws": int(row.draws),
                                     "transfer_accuracy": row.transfer_accuracy_mean,
                                     "transfer_accuracy_std": row.transfer_accuracy_std,
                                     "scratch_accuracy": row.scratch_accuracy_mean,
                                     "scratch_accuracy_std": row.scratch_accuracy_std,
                                     "gain_points": round(row.gain_points_mean, 2)}
                        for row in summary.itertuples()}}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("budget", __doc__, run, argv, paths={
        "pretrained": "pretrained checkpoint (.pt)",
        "target": "target dataset (.npz) with its pool split",
        "table_out": "per-budget summary (.csv) to write",
        "curve_out": "label-budget curve (.png) to write",
    })


if __name__ == "__main__":
    sys.exit(main())
