"""transfer: put a new head on the pretrained backbone and train it on the target label budget (as a linear
probe, a full fine-tune, or discriminatively with a lower backbone LR); train the same architecture from
scratch on the same labels with the same optimizer steps as the baseline; report both and the gain."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.augmentation import online_augmentation
from tasks.checkpoint import load_model, save_checkpoint
from tasks.data import Dataset, example_input, load_dataset
from tasks.distributed import is_main_process
from tasks.io import atomic_path
from tasks.model import DigitNet, new_head
from tasks.params import Params
from tasks.stage import stage_cli
from tasks.tracking import NullTracker, Tracker
from tasks.training import EpochCallback, evaluate, fit, resolve_device, seed_everything, supervised, validation

log = logging.getLogger(__name__)
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
    source_only = evaluate(base, *test, device=device)["accuracy"]

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
              "scratch_accuracy": evaluate(scratch, *test, device=device)["accuracy"],
              "transfer_accuracy": evaluate(model, *test, device=device)["accuracy"]}
    scores["gain_points"] = round(100 * (scores["transfer_accuracy"] - scores["scratch_accuracy"]), 2)
    return model.cpu(), scores, {"transfer": transfer_history, "scratch": scratch_history}


def write_history(path: Path, histories: dict[str, History]) -> None:
    """One row per epoch with each model's metrics side by side (columns prefixed by model name)."""
    frames = [pd.DataFrame(h).set_index("epoch").add_prefix(f"{name}_") for name, h in histories.items()]
    with atomic_path(path) as tmp:
        pd.concat(frames, axis=1).reset_index().to_csv(tmp, index=False)


def run(params: Params, *, pretrained: Path, target: Path, model_out: Path, history_out: Path,
        tracker: Tracker | None = None) -> dict[str, Any]:
    """Transfer and the from-scratch baseline on the target's labelled split; save the transferred model.

    Under torchrun every rank trains; rank 0 alone saves and records the model."""
    tracker = tracker or NullTracker()
    data, digest = load_dataset(target)
    tracker.log_dataset("target", target, digest, context="input")
    model, scores, histories = transfer_and_scratch(pretrained, data, params, seed=params.seed, tracker=tracker)
    if not is_main_process():
        return scores
    metrics = {"mode": params.transfer.mode, "train_images": len(data["train"]), **scores,
               "transfer_val_accuracy": histories["transfer"][-1]["val_accuracy"],
               "scratch_val_accuracy": histories["scratch"][-1]["val_accuracy"]}
    log.info("target test accuracy: source-only %.4f, scratch %.4f, transfer %.4f (gain %+.2f points)",
             scores["source_only_accuracy"], scores["scratch_accuracy"], scores["transfer_accuracy"],
             scores["gain_points"])
    save_checkpoint(model_out, model, stage="transfer", params=params.model_dump(mode="json"), metrics=scores)
    write_history(history_out, histories)
    tracker.log_artifact(history_out, "history")
    tracker.log_torch_model(model, "transferred", example_input(data["test"]))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("transfer", __doc__, run, argv, paths={
        "pretrained": "pretrained checkpoint (.pt)",
        "target": "target dataset (.npz) from ingest",
        "model_out": "transferred checkpoint (.pt) to write",
        "history_out": "per-epoch metrics (.csv) to write",
    }, processes=lambda params: params.transfer.nproc)


if __name__ == "__main__":
    sys.exit(main())
