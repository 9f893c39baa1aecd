"""budget: the label-budget curve. At each labels-per-class budget, several labelled sets are drawn from
the target's training pool; on each, three models train for the same number of optimizer steps: from scratch,
transfer, and transfer that also learns from the unlabelled pool (semi-supervised). Mean and spread of their
accuracies are reported and plotted against the budget, beside the pretrained model's own (source-only)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from groundwork.data.atomic import atomic_path
from groundwork.data.datasets import load_dataset
from groundwork.entrypoint import stage_cli
from groundwork.params import Params
from groundwork.plots import budget_curve
from groundwork.tracking.runs import NullTracker, RunLog
from groundwork.training.label_budget import METHODS, summarise, sweep

log = logging.getLogger(__name__)


def run(params: Params, *, pretrained: Path, target: Path, table_out: Path, curve_out: Path,
        tracker: RunLog | None = None) -> dict[str, Any]:
    """Sweep the budgets; write the per-budget table (CSV) and the curve (PNG); return the summary."""
    tracker = tracker or NullTracker()
    data, digest = load_dataset(target, splits=("pool", "val", "test"))  # its own labelled sets, drawn from the pool
    tracker.log_dataset("target", target, digest, context="input")
    summary = summarise(sweep(pretrained, data, params, tracker))
    with atomic_path(table_out) as tmp:
        summary.to_csv(tmp, index=False)
    budget_curve(curve_out, summary)
    tracker.log_artifact(curve_out, "plots")
    tracker.log_artifact(table_out, "budget")
    return {"steps_per_model": params.budget.steps,
            "source_only_accuracy": float(summary["source_only_accuracy_mean"].iloc[0]),
            "budgets": {row["budget"]: {"labels_per_class": int(row["labels_per_class"]), "draws": int(row["draws"]),
                                        **{f"{method}_accuracy{stat}": float(row[f"{method}_accuracy_{key}"])
                                           for method in METHODS for stat, key in (("", "mean"), ("_std", "std"))},
                                        "gain_points": round(float(row["gain_points_mean"]), 2)}
                        for _, row in summary.iterrows()}}


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
