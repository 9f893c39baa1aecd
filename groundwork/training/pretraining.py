"""Pretraining on the source corpus: supervised (cross-entropy, optionally augmenting every batch), or
contrastive (label-free, SimCLR's NT-Xent over two augmented views, then a linear probe on frozen features)."""

from __future__ import annotations

from pathlib import Path

from groundwork.data.datasets import Dataset, Split
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params
from groundwork.training.contrastive import Projector, contrastive_objective, contrastive_validation
from groundwork.training.distributed import resolve_device
from groundwork.training.loop import EpochCallback, fit, loss_and_accuracy, supervised, validation
from groundwork.training.precision import autocast_dtype
from groundwork.training.transforms import online_augmentation


def pretrain_supervised(model: DigitNet, train: Split, source: Dataset, params: Params, on_epoch: EpochCallback,
                        resume: Path | None) -> list[dict[str, float]]:
    """Cross-entropy on the source labels, augmenting on the fly when params say so."""
    cfg, device = params.pretrain, resolve_device(params.device)
    augment = online_augmentation(params.augment) if cfg.augmentation == "online" else None
    return fit(model, train.tensors(), cfg, device=device, seed=params.seed, objective=supervised(augment, cfg.loss),
               validate=validation(*source["val"].tensors(), device=device), on_epoch=on_epoch, resume=resume,
               desc="pretrain", precision=autocast_dtype(params.precision, device))


def pretrain_contrastive(model: DigitNet, train: Split, source: Dataset, params: Params, on_epoch: EpochCallback,
                         resume: Path | None) -> tuple[list[dict[str, float]], float]:
    """NT-Xent on unlabelled images, then a linear probe (frozen backbone, labels for the head only)."""
    cfg, device = params.pretrain, resolve_device(params.device)
    precision = autocast_dtype(params.precision, device)
    projector = Projector(model.backbone, params.model.embedding_width, cfg.projection_dim)
    history = fit(projector, train.tensors(), cfg, device=device, seed=params.seed,
                  objective=contrastive_objective(params.augment, cfg.temperature),
                  validate=contrastive_validation(source["val"].images_tensor(), params.augment, cfg.temperature,
                                                  device=device, seed=params.seed),
                  on_epoch=on_epoch, resume=resume, desc="pretrain (contrastive)", precision=precision)
    probe = cfg.model_copy(update={"epochs": cfg.probe_epochs, "warmup_epochs": 0, "schedule": "cosine",
                                   "early_stopping": 0, "restore_best": False})
    model.freeze_backbone()
    fit(model, source["train"].tensors(), probe, device=device, seed=params.seed, desc="linear probe",
        validate=validation(*source["val"].tensors(), device=device), precision=precision)
    model.freeze_backbone(False)
    return history, loss_and_accuracy(model, *source["test"].tensors(), device=device)["accuracy"]
