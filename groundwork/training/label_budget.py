"""The label-budget sweep: at each labels-per-class budget, several labelled sets drawn from the target's pool, and
on each, three models trained for the same number of optimizer steps (from scratch, transfer, semi-supervised
transfer), scored on the target's test split beside the pretrained model's own accuracy (source-only)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from groundwork.data.datasets import Dataset
from groundwork.data.splits import label_budget
from groundwork.models.checkpoint import load_model
from groundwork.params import Params
from groundwork.tracking.runs import Tracker
from groundwork.training.loop import steps_per_epoch
from groundwork.training.transfer_learning import from_scratch, target_test_accuracy, transfer

log = logging.getLogger(__name__)
DRAW_SEED_STRIDE = 1000  # seeds of successive draws: far apart, reproducible


def budget_params(params: Params, train_images: int) -> Params:
    """Transfer params with epochs set so that one model takes `budget.steps` optimizer steps."""
    cfg = params.transfer
    epochs = max(1, math.ceil(params.budget.steps / steps_per_epoch(train_images, cfg.batch_size)))
    freeze = min(cfg.freeze_epochs, epochs - 1)
    transfer = cfg.model_copy(update={"epochs": epochs, "freeze_epochs": freeze, "warmup_epochs": 0})
    return params.model_copy(update={"transfer": transfer})


METHODS = ("scratch", "transfer", "semi_supervised")  # trained at every draw; source-only needs no training


def method_params(params: Params, method: str) -> Params:
    """Params for one method of the sweep: transfer supervised only, or with the configured semi-supervision
    (FixMatch) whatever `transfer.semi_supervised.method` says; scratch is supervised in any case."""
    semi = params.transfer.semi_supervised
    chosen = semi.model_copy(update={"method": "fixmatch" if method == "semi_supervised" else "none"})
    return params.model_copy(update={"transfer": params.transfer.model_copy(update={"semi_supervised": chosen})})


def sweep(pretrained: Path, target: Dataset, params: Params, tracker: Tracker) -> pd.DataFrame:
    """One row per (budget, draw): the draw's size, and source-only, scratch, transfer and semi-supervised
    transfer accuracy on the target's test split."""
    source_only = target_test_accuracy(load_model(pretrained)[0], target, params)  # the same at every draw
    rows = []
    for per_class in params.budget.labels_per_class:
        draws = 1 if per_class is None else params.budget.draws  # the whole pool has one possible draw
        for draw in range(draws):
            seed = params.seed + DRAW_SEED_STRIDE * (draw + 1)
            train = label_budget(target["pool"], per_class, seed=seed, key="budget.labels_per_class")
            data = {**target, "train": train}
            sized = budget_params(params, len(train))
            # only the test accuracy is kept: no per-epoch validation unless training itself reads it
            scratch, _ = from_scratch(data, sized, seed=seed, validated=False)
            scores = {"source_only_accuracy": source_only,
                      "scratch_accuracy": target_test_accuracy(scratch, data, sized)}
            for method in METHODS[1:]:
                model, _ = transfer(pretrained, data, method_params(sized, method), seed=seed, validated=False)
                scores[f"{method}_accuracy"] = target_test_accuracy(model, data, sized)
            scores["gain_points"] = round(100 * (scores["transfer_accuracy"] - scores["scratch_accuracy"]), 2)
            label = "all" if per_class is None else per_class
            log.info("labels/class %s, draw %d: %s", label, draw + 1,
                     ", ".join(f"{name.removesuffix('_accuracy')} {value:.4f}" for name, value in scores.items()
                               if name.endswith("_accuracy")))
            rows.append({"labels_per_class": len(train) // 10 if per_class is None else per_class,
                         "budget": str(label), "draw": draw + 1, "train_images": len(train), **scores})
            tracker.log_metrics({f"budget_{label}_{method}_accuracy": scores[f"{method}_accuracy"]
                                 for method in METHODS}, step=draw + 1)
    return pd.DataFrame(rows)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per budget: mean and standard deviation over draws (0 where there is one draw)."""
    grouped = results.groupby(["labels_per_class", "budget"], sort=True)
    columns = ["source_only_accuracy", *(f"{method}_accuracy" for method in METHODS), "gain_points"]
    summary = grouped[columns].agg(["mean", "std"]).fillna(0.0)
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    return summary.reset_index().assign(draws=grouped.size().to_numpy())
