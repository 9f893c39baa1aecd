"""The label-budget sweep: at each labels-per-class budget, several labelled sets drawn from the target's pool, and
on each, three models trained for the same number of optimizer steps (from scratch, transfer, semi-supervised
transfer), scored on the target's test split beside the pretrained model's own accuracy (source-only)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from groundwork.data.datasets import Dataset
from groundwork.data.splits import label_budget
from groundwork.models.checkpoint import load_model
from groundwork.params import Params
from groundwork.tracking.runs import RunLog
from groundwork.training.distributed import resolve_device
from groundwork.training.jobs import run_jobs, worker_count
from groundwork.training.loop import epochs_logged_at, steps_per_epoch
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


@dataclass(frozen=True)
class Draw:
    """One labelled set of the sweep, and what its models need: a job for groundwork.training.jobs."""

    pretrained: Path
    target: Dataset
    params: Params
    per_class: int | None  # None: the whole pool
    index: int  # 0-based, within its budget

    @property
    def seed(self) -> int:
        return self.params.seed + DRAW_SEED_STRIDE * (self.index + 1)

    @property
    def label(self) -> str:
        return "all" if self.per_class is None else str(self.per_class)

    def __str__(self) -> str:  # how an error of groundwork.training.jobs names it
        return f"labels/class {self.label}, draw {self.index + 1}"


def draws(pretrained: Path, target: Dataset, params: Params) -> list[Draw]:
    """Every draw of the sweep, budget by budget."""
    return [Draw(pretrained, target, params, per_class, index) for per_class in params.budget.labels_per_class
            for index in range(1 if per_class is None else params.budget.draws)]  # the whole pool: one draw


def train_draw(draw: Draw) -> dict[str, Any]:
    """The draw's labelled set (its size), its three models trained on it, and their test accuracy. Their epochs
    are logged at DEBUG: the sweep logs one line per draw (GROUNDWORK_LOG_LEVEL=DEBUG shows the epochs)."""
    log.debug("labels/class %s, draw %d: training its %d models", draw.label, draw.index + 1, len(METHODS))
    train = label_budget(draw.target["pool"], draw.per_class, seed=draw.seed, key="budget.labels_per_class")
    data = {**draw.target, "train": train}
    sized = budget_params(draw.params, len(train))
    with epochs_logged_at(logging.DEBUG):
        # only the test accuracy is kept: no per-epoch validation unless training itself reads it
        scratch, _ = from_scratch(data, sized, seed=draw.seed, validated=False)
        scores = {"scratch_accuracy": target_test_accuracy(scratch, data, sized)}
        for method in METHODS[1:]:
            model, _ = transfer(draw.pretrained, data, method_params(sized, method), seed=draw.seed,
                                validated=False)
            scores[f"{method}_accuracy"] = target_test_accuracy(model, data, sized)
    return {"train_images": len(train), **scores}


def sweep(pretrained: Path, target: Dataset, params: Params, tracker: RunLog) -> pd.DataFrame:
    """One row per (budget, draw): the draw's size, and source-only, scratch, transfer and semi-supervised
    transfer accuracy on the target's test split. The draws train in `budget.workers` processes, or on the Dask
    cluster whose scheduler is set (groundwork.training.jobs)."""
    source_only = target_test_accuracy(load_model(pretrained)[0], target, params)  # the same at every draw
    jobs = draws(pretrained, target, params)
    workers = worker_count(params.budget.workers, len(jobs), resolve_device(params.device))
    log.info("%d draws of %d models each, in %d process(es)", len(jobs), len(METHODS), workers)
    rows = []
    with tqdm(total=len(jobs), desc="budget draws", unit="draw", disable=None) as bar:
        for draw, trained in zip(jobs, run_jobs(train_draw, jobs, workers), strict=True):
            images = trained.pop("train_images")
            row = {"labels_per_class": images // 10 if draw.per_class is None else draw.per_class,
                   "budget": draw.label, "draw": draw.index + 1, "train_images": images,
                   "source_only_accuracy": source_only, **trained}
            row["gain_points"] = round(100 * (row["transfer_accuracy"] - row["scratch_accuracy"]), 2)
            log.info("labels/class %s, draw %d: %s", draw.label, draw.index + 1,
                     ", ".join(f"{method} {row[f'{method}_accuracy']:.4f}" for method in ("source_only", *METHODS)))
            tracker.log_metrics({f"budgets.{draw.label}.draw_{method}_accuracy": row[f"{method}_accuracy"]
                                 for method in METHODS}, step=draw.index + 1)
            rows.append(row)
            bar.update()
    return pd.DataFrame(rows)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per budget: mean and standard deviation over draws (0 where there is one draw)."""
    grouped = results.groupby(["labels_per_class", "budget"], sort=True)
    columns = ["source_only_accuracy", *(f"{method}_accuracy" for method in METHODS), "gain_points"]
    summary = grouped[columns].agg(["mean", "std"]).fillna(0.0)
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    return summary.reset_index().assign(draws=grouped.size().to_numpy())
