"""Transfer learning: a new head on a pretrained backbone, trained on the target's labels as a linear probe, a
full fine-tune, or discriminatively (head first, then the backbone at a lower LR), beside a from-scratch model of
the same architecture with the same labels and optimizer steps as the baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from groundwork.data.datasets import Dataset
from groundwork.models.checkpoint import load_model
from groundwork.models.digitnet import DigitNet, new_head
from groundwork.params import Params
from groundwork.tracking.runs import Tracker
from groundwork.training.distributed import resolve_device
from groundwork.training.loop import EpochCallback, fit, loss_and_accuracy, seed_everything, supervised, validation
from groundwork.training.transforms import online_augmentation

History = list[dict[str, float]]


def transferred_model(pretrained: DigitNet, *, seed: int) -> DigitNet:
    """The pretrained backbone with a freshly initialised head (seeded)."""
    seed_everything(seed)
    pretrained.head = new_head(pretrained.arch, pretrained.num_classes)
    return pretrained


def param_groups(model: DigitNet, lr: float, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """The head at the full LR and the backbone at a scaled one."""
    return [{"params": list(model.head.parameters()), "lr": lr},
            {"params": list(model.backbone.parameters()), "lr": lr * backbone_lr_scale}]


def _train(model: DigitNet, data: Dataset, params: Params, *, epochs: int, seed: int, desc: str,
           groups: list[dict[str, Any]] | None, on_epoch: EpochCallback | None) -> History:
    cfg, device = params.transfer, resolve_device(params.device)
    augment = online_augmentation(params.augment) if cfg.augmentation == "online" else None
    return fit(model, data["train"].tensors(), cfg.model_copy(update={"epochs": epochs}), device=device, seed=seed,
               objective=supervised(augment), validate=validation(*data["val"].tensors(), device=device),
               groups=groups, on_epoch=on_epoch, desc=desc)


def fine_tune(model: DigitNet, data: Dataset, params: Params, *, seed: int,
              on_epoch: EpochCallback | None = None) -> History:
    """Train a transferred model in the configured mode; epochs (and so optimizer steps) as in params."""
    cfg = params.transfer
    if cfg.mode == "linear_probe":
        model.freeze_backbone()
        history = _train(model, data, params, epochs=cfg.epochs, seed=seed, desc="transfer (linear probe)",
                         groups=None, on_epoch=on_epoch)
        model.freeze_backbone(False)
        return history
    if cfg.mode == "finetune":
        return _train(model, data, params, epochs=cfg.epochs, seed=seed, desc="transfer", groups=None,
                      on_epoch=on_epoch)
    history: History = []
    if cfg.freeze_epochs:
        model.freeze_backbone()
        history = _train(model, data, params, epochs=cfg.freeze_epochs, seed=seed, desc="transfer (head only)",
                         groups=None, on_epoch=on_epoch)
        model.freeze_backbone(False)

    def shifted(epoch: int, metrics: dict[str, float]) -> None:
        if on_epoch is not None:
            on_epoch(epoch + cfg.freeze_epochs, metrics)

    rest = _train(model, data, params, epochs=cfg.epochs - cfg.freeze_epochs, seed=seed + 1,
                  desc="transfer (discriminative)", groups=param_groups(model, cfg.lr, cfg.backbone_lr_scale),
                  on_epoch=shifted)
    return history + [{**row, "epoch": row["epoch"] + cfg.freeze_epochs} for row in rest]


def transfer_and_scratch(pretrained: Path, data: Dataset, params: Params, *, seed: int,
                         tracker: Tracker | None = None) -> tuple[DigitNet, dict[str, float], dict[str, History]]:
    """Source-only, transfer and from-scratch (same labels, same optimizer steps) accuracy on the test split."""
    device = resolve_device(params.device)
    test = data["test"].tensors()
    base, _ = load_model(pretrained)
    source_only = loss_and_accuracy(base, *test, device=device)["accuracy"]

    def logger(name: str) -> EpochCallback | None:
        if tracker is None:
            return None
        return lambda epoch, metrics: tracker.log_metrics({f"{name}_{k}": v for k, v in metrics.items()}, step=epoch)

    model = transferred_model(base, seed=seed)
    transfer_history = fine_tune(model, data, params, seed=seed, on_epoch=logger("transfer"))
    seed_everything(seed)
    scratch = DigitNet(params.model)
    scratch_history = _train(scratch, data, params, epochs=params.transfer.epochs, seed=seed, desc="scratch",
                             groups=None, on_epoch=logger("scratch"))
    scores = {"source_only_accuracy": source_only,
              "scratch_accuracy": loss_and_accuracy(scratch, *test, device=device)["accuracy"],
              "transfer_accuracy": loss_and_accuracy(model, *test, device=device)["accuracy"]}
    scores["gain_points"] = round(100 * (scores["transfer_accuracy"] - scores["scratch_accuracy"]), 2)
    return model.cpu(), scores, {"transfer": transfer_history, "scratch": scratch_history}
