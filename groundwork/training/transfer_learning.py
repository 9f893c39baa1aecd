"""Transfer learning: the pretrained model's backbone with a new head or the source's own (a warm start), trained
on the target's labels as a linear probe, a full fine-tune, or discriminatively (head first, then the backbone at
a lower LR), optionally learning from the target's unlabelled pool too (FixMatch); beside it, a from-scratch
model of the same architecture with the same labels and optimizer steps as the baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from groundwork.data.datasets import Dataset
from groundwork.models.checkpoint import load_model
from groundwork.models.digitnet import DigitNet, new_head
from groundwork.params import Params
from groundwork.tracking.runs import RunLog
from groundwork.training.distributed import resolve_device
from groundwork.training.loop import (
    EpochCallback,
    Objective,
    fit,
    loss_and_accuracy,
    needs_validation,
    seed_everything,
    supervised,
    validation,
)
from groundwork.training.precision import autocast_dtype
from groundwork.training.semi_supervised import fixmatch
from groundwork.training.transforms import online_augmentation, strong_augmentation

History = list[dict[str, float]]


def transferred_model(pretrained: DigitNet, *, seed: int, head: str = "new") -> DigitNet:
    """The pretrained model with a freshly initialised head, or with its own head kept (`head="keep"`); the global
    RNG seeded either way (dropout draws from it while training)."""
    seed_everything(seed)
    if head == "new":
        pretrained.head = new_head(pretrained.arch, pretrained.num_classes)
    return pretrained


def param_groups(model: DigitNet, lr: float, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """The head at the full LR and the backbone at a scaled one."""
    return [{"params": list(model.head.parameters()), "lr": lr},
            {"params": list(model.backbone.parameters()), "lr": lr * backbone_lr_scale}]


def _objective(data: Dataset, params: Params, *, semi_supervised: bool) -> Objective:
    """Supervised on the labelled split (augmented on the fly when params say so), plus FixMatch on the
    unlabelled pool when asked for."""
    cfg = params.transfer
    augment = online_augmentation(params.augment) if cfg.augmentation == "online" else None
    semi = cfg.semi_supervised
    if not semi_supervised or semi.method == "none":
        return supervised(augment, cfg.loss)
    return fixmatch(data["pool"].images_tensor(), ratio=semi.ratio, confidence=semi.confidence, weight=semi.weight,
                    strong=strong_augmentation(params.augment), labelled_augment=augment, loss=cfg.loss)


def _train(model: DigitNet, data: Dataset, params: Params, *, epochs: int, seed: int, desc: str,
           groups: list[dict[str, Any]] | None, on_epoch: EpochCallback | None, semi_supervised: bool,
           validated: bool) -> History:
    cfg, device = params.transfer, resolve_device(params.device)
    run = cfg.model_copy(update={"epochs": epochs})
    validate = validation(*data["val"].tensors(), device=device) if validated or needs_validation(run) else None
    return fit(model, data["train"].tensors(), run, device=device, seed=seed,
               objective=_objective(data, params, semi_supervised=semi_supervised), validate=validate, groups=groups,
               on_epoch=on_epoch, desc=desc, precision=autocast_dtype(params.precision, device))


def fine_tune(model: DigitNet, data: Dataset, params: Params, *, seed: int, on_epoch: EpochCallback | None = None,
              validated: bool = True) -> History:
    """Train a transferred model in the configured mode, semi-supervised when params say so; epochs (and so
    optimizer steps) as in params. `validated=False` skips the per-epoch validation where training does not
    read it (the history then holds training metrics alone)."""
    cfg = params.transfer
    semi = cfg.semi_supervised.method != "none"
    if cfg.mode == "linear_probe":
        model.freeze_backbone()
        history = _train(model, data, params, epochs=cfg.epochs, seed=seed, desc="transfer (linear probe)",
                         groups=None, on_epoch=on_epoch, semi_supervised=semi, validated=validated)
        model.freeze_backbone(False)
        return history
    if cfg.mode == "finetune":
        return _train(model, data, params, epochs=cfg.epochs, seed=seed, desc="transfer", groups=None,
                      on_epoch=on_epoch, semi_supervised=semi, validated=validated)
    history: History = []
    if cfg.freeze_epochs:
        model.freeze_backbone()
        history = _train(model, data, params, epochs=cfg.freeze_epochs, seed=seed, desc="transfer (head only)",
                         groups=None, on_epoch=on_epoch, semi_supervised=semi, validated=validated)
        model.freeze_backbone(False)

    def shifted(epoch: int, metrics: dict[str, float]) -> None:
        if on_epoch is not None:
            on_epoch(epoch + cfg.freeze_epochs, metrics)

    rest = _train(model, data, params, epochs=cfg.epochs - cfg.freeze_epochs, seed=seed + 1,
                  desc="transfer (discriminative)", groups=param_groups(model, cfg.lr, cfg.backbone_lr_scale),
                  on_epoch=shifted, semi_supervised=semi, validated=validated)
    return history + [{**row, "epoch": row["epoch"] + cfg.freeze_epochs} for row in rest]


def transfer(pretrained: Path, data: Dataset, params: Params, *, seed: int, on_epoch: EpochCallback | None = None,
             validated: bool = True) -> tuple[DigitNet, History]:
    """The pretrained model transferred to the target as params say (head, mode, semi-supervision)."""
    model = transferred_model(load_model(pretrained)[0], seed=seed, head=params.transfer.head)
    return model, fine_tune(model, data, params, seed=seed, on_epoch=on_epoch, validated=validated)


def from_scratch(data: Dataset, params: Params, *, seed: int, on_epoch: EpochCallback | None = None,
                 validated: bool = True) -> tuple[DigitNet, History]:
    """The baseline: the same architecture from a random start, on the same labels with the same optimizer steps
    and augmentation as transfer, supervised only."""
    seed_everything(seed)
    model = DigitNet(params.model)
    return model, _train(model, data, params, epochs=params.transfer.epochs, seed=seed, desc="scratch", groups=None,
                         on_epoch=on_epoch, semi_supervised=False, validated=validated)


def target_test_accuracy(model: DigitNet, data: Dataset, params: Params) -> float:
    """Accuracy on the target's test split."""
    return loss_and_accuracy(model, *data["test"].tensors(), device=resolve_device(params.device))["accuracy"]


def transfer_and_scratch(pretrained: Path, data: Dataset, params: Params, *, seed: int,
                         tracker: RunLog | None = None) -> tuple[DigitNet, dict[str, float], dict[str, History]]:
    """Source-only, transfer and from-scratch (same labels, same optimizer steps) accuracy on the test split."""
    def logger(name: str) -> EpochCallback | None:
        if tracker is None:
            return None
        return lambda epoch, metrics: tracker.log_metrics({f"{name}_{k}": v for k, v in metrics.items()}, step=epoch)

    source_only = target_test_accuracy(load_model(pretrained)[0], data, params)
    model, transfer_history = transfer(pretrained, data, params, seed=seed, on_epoch=logger("transfer"))
    scratch, scratch_history = from_scratch(data, params, seed=seed, on_epoch=logger("scratch"))
    scores = {"source_only_accuracy": source_only, "scratch_accuracy": target_test_accuracy(scratch, data, params),
              "transfer_accuracy": target_test_accuracy(model, data, params)}
    scores["gain_points"] = round(100 * (scores["transfer_accuracy"] - scores["scratch_accuracy"]), 2)
    return model.cpu(), scores, {"transfer": transfer_history, "scratch": scratch_history}
