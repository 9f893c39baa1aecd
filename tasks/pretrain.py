"""pretrain: train the CNN on the source corpus, supervised (on the augment stage's copies or with on-the-fly
augmentation) or contrastive (label-free, SimCLR's NT-Xent over two augmented views, then a linear probe),
validating every epoch, and save a self-describing checkpoint."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.augmentation import online_augmentation
from tasks.checkpoint import save_checkpoint
from tasks.contrastive import Projector, contrastive_objective, contrastive_validation
from tasks.data import Dataset, Split, example_input, load_dataset
from tasks.distributed import is_main_process
from tasks.io import atomic_path
from tasks.model import DigitNet
from tasks.params import Params
from tasks.stage import stage_cli
from tasks.tracking import NullTracker, Tracker
from tasks.training import EpochCallback, evaluate, fit, resolve_device, seed_everything, supervised, validation

log = logging.getLogger(__name__)


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """Per-epoch metrics as CSV, the format DVC plots read."""
    with atomic_path(path) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def pretrain_supervised(model: DigitNet, train: Split, source: Dataset, params: Params, on_epoch: EpochCallback,
                        resume: Path | None) -> list[dict[str, float]]:
    """Cross-entropy on the source labels, augmenting on the fly when params say so."""
    cfg, device = params.pretrain, resolve_device(params.device)
    augment = online_augmentation(params.augment) if cfg.augmentation == "online" else None
    return fit(model, train.tensors(), cfg, device=device, seed=params.seed, objective=supervised(augment),
               validate=validation(*source["val"].tensors(), device=device), on_epoch=on_epoch, resume=resume,
               desc="pretrain")


def pretrain_contrastive(model: DigitNet, train: Split, source: Dataset, params: Params, on_epoch: EpochCallback,
                         resume: Path | None) -> tuple[list[dict[str, float]], float]:
    """NT-Xent on unlabelled images, then a linear probe (frozen backbone, labels for the head only)."""
    cfg, device = params.pretrain, resolve_device(params.device)
    projector = Projector(model.backbone, params.model.embedding_dim, cfg.projection_dim)
    history = fit(projector, train.tensors(), cfg, device=device, seed=params.seed,
                  objective=contrastive_objective(params.augment, cfg.temperature),
                  validate=contrastive_validation(source["val"].images_tensor(), params.augment, cfg.temperature,
                                                  device=device, seed=params.seed),
                  on_epoch=on_epoch, resume=resume, desc="pretrain (contrastive)")
    probe = cfg.model_copy(update={"epochs": cfg.probe_epochs, "warmup_epochs": 0, "schedule": "cosine",
                                   "early_stopping": 0, "restore_best": False})
    model.freeze_backbone()
    fit(model, source["train"].tensors(), probe, device=device, seed=params.seed, desc="linear probe",
        validate=validation(*source["val"].tensors(), device=device))
    model.freeze_backbone(False)
    return history, evaluate(model, *source["test"].tensors(), device=device)["accuracy"]


def run(params: Params, *, train: Path, source: Path, model_out: Path, history_out: Path,
        tracker: Tracker | None = None, resume: Path | None = None) -> dict[str, Any]:
    """Pretrain, test on the source's held-out split, save the model and its per-epoch history.

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
    test = evaluate(model, *source_set["test"].tensors(), device=device)
    val = evaluate(model, *source_set["val"].tensors(), device=device)
    metrics |= {"source_val_accuracy": val["accuracy"], "source_test_accuracy": test["accuracy"],
                "source_test_loss": test["loss"], "epochs": len(history)}
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
