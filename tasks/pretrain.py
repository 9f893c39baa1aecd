"""pretrain: train the model on the source corpus, supervised (on the augment stage's copies or with on-the-fly
augmentation) or contrastive (label-free, SimCLR's NT-Xent over two augmented views, then a linear probe),
validating every epoch, and save a self-describing checkpoint."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from groundwork.data.atomic import atomic_path
from groundwork.data.datasets import example_input, load_dataset
from groundwork.entrypoint import stage_cli
from groundwork.models.checkpoint import save_checkpoint
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params
from groundwork.tracking.runs import NullTracker, RunLog
from groundwork.training.distributed import is_main_process, resolve_device
from groundwork.training.loop import loss_and_accuracy, seed_everything
from groundwork.training.pretraining import pretrain_contrastive, pretrain_supervised

log = logging.getLogger(__name__)


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """Per-epoch metrics as CSV, the format DVC plots read."""
    with atomic_path(path) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def run(params: Params, *, train: Path, source: Path, model_out: Path, history_out: Path,
        tracker: RunLog | None = None, resume: Path | None = None) -> dict[str, Any]:
    """Pretrain, score the source's training and held-out splits, save the model and its per-epoch history.

    With `resume`, training state is kept there after every epoch, and a run killed mid-way continues
    from its last completed epoch when started again. Under torchrun every rank trains; rank 0 alone tests,
    saves and records the model.
    """
    tracker = tracker or NullTracker()
    cfg = params.pretrain
    source_set, source_digest = load_dataset(source)
    tracker.log_dataset("source", source, source_digest, context="input")
    if cfg.augmentation == "offline":
        copies, train_digest = load_dataset(train, splits=("train",))
        tracker.log_dataset("augmented", train, train_digest, context="input")
        train_split = copies["train"]
    else:
        train_split = source_set["train"]
    seed_everything(params.seed)
    model = DigitNet(params.model)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        tracker.log_metrics(metrics, step=epoch)

    metrics: dict[str, Any] = {"objective": cfg.objective, "train_images": len(train_split)}
    if cfg.objective == "contrastive":
        history, metrics["linear_probe_accuracy"] = pretrain_contrastive(model, train_split, source_set, params,
                                                                         on_epoch, resume)
    else:
        history = pretrain_supervised(model, train_split, source_set, params, on_epoch, resume)
    if not is_main_process():
        return metrics
    device = resolve_device(params.device)
    test = loss_and_accuracy(model, *source_set["test"].tensors(), device=device)
    val = loss_and_accuracy(model, *source_set["val"].tensors(), device=device)
    # the training images themselves (unaugmented): what a loop that scores its own training data reports
    train_accuracy = loss_and_accuracy(model, *source_set["train"].tensors(), device=device)["accuracy"]
    metrics |= {"source_train_accuracy": train_accuracy, "source_val_accuracy": val["accuracy"],
                "source_test_accuracy": test["accuracy"], "source_test_loss": test["loss"], "epochs": len(history)}
    model.cpu()
    save_checkpoint(model_out, model, stage="pretrain", params=params.model_dump(mode="json"), metrics=metrics)
    write_history(history_out, history)
    tracker.log_artifact(history_out, "history")
    tracker.log_torch_model(model, "pretrained", example_input(source_set["test"]))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("pretrain", __doc__, run, argv, paths={
        "train": "augmented source training set (.npz), used when pretrain.augmentation is offline",
        "source": "source dataset with its splits (.npz)",
        "model_out": "checkpoint (.pt) to write",
        "history_out": "per-epoch metrics (.csv) to write",
    }, options={
        "resume": (Path(".resume/pretrain.pt"),
                   "training state kept after every epoch, so a killed run continues where it stopped"),
    }, processes=lambda params: params.pretrain.nproc)


if __name__ == "__main__":
    sys.exit(main())
