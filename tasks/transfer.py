"""transfer: put a new head on the pretrained backbone and fine-tune it on the target label budget; train the
same architecture from scratch on the same labels, with the same optimizer steps, as the baseline."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.checkpoint import load_model, save_checkpoint
from tasks.data import Dataset, example_input, load_dataset
from tasks.io import atomic_path
from tasks.model import DigitNet, new_head
from tasks.params import Params
from tasks.stage import stage_main, stage_parser
from tasks.tracking import NullTracker, Tracker
from tasks.training import evaluate, fit, resolve_device, seed_everything

log = logging.getLogger(__name__)


def transferred_model(pretrained: DigitNet, *, seed: int) -> DigitNet:
    """The pretrained backbone with a freshly initialised head (seeded)."""
    seed_everything(seed)
    pretrained.head = new_head(pretrained.arch, pretrained.num_classes)
    return pretrained


def param_groups(model: DigitNet, lr: float, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """The head at the full LR and the backbone at a scaled one (0 freezes it)."""
    groups: list[dict[str, Any]] = [{"params": list(model.head.parameters()), "lr": lr}]
    if backbone_lr_scale > 0:
        groups.append({"params": list(model.backbone.parameters()), "lr": lr * backbone_lr_scale})
    else:
        model.backbone.requires_grad_(False)
    return groups


def train_on_target(model: DigitNet, target: Dataset, params: Params, *, name: str, tracker: Tracker,
                    groups: list[dict[str, Any]] | None = None) -> list[dict[str, float]]:
    """Fit on the target's labelled split, logging each epoch's metrics prefixed with `name`."""
    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        tracker.log_metrics({f"{name}_{k}": v for k, v in metrics.items()}, step=epoch)

    return fit(model, target["train"].tensors(), target["val"].tensors(), params.transfer,
               device=resolve_device(params.device), seed=params.seed, groups=groups, on_epoch=on_epoch, desc=name)


def write_history(path: Path, histories: dict[str, list[dict[str, float]]]) -> None:
    """One row per epoch with each model's metrics side by side (columns prefixed by model name)."""
    frames = [pd.DataFrame(h).set_index("epoch").add_prefix(f"{name}_") for name, h in histories.items()]
    with atomic_path(path) as tmp:
        pd.concat(frames, axis=1).reset_index().to_csv(tmp, index=False)


def run(params: Params, *, pretrained: Path, target: Path, model_out: Path, history_out: Path,
        tracker: Tracker | None = None) -> dict[str, Any]:
    """Transfer and the from-scratch baseline on the same labels; return both test scores and the gain."""
    tracker = tracker or NullTracker()
    data, digest = load_dataset(target)
    tracker.set_tags({"data_digest.target": digest})
    device = resolve_device(params.device)
    base, _ = load_model(pretrained)
    test = data["test"].tensors()
    source_only = evaluate(base, *test, device=device)["accuracy"]

    model = transferred_model(base, seed=params.seed)
    groups = param_groups(model, params.transfer.lr, params.transfer.backbone_lr_scale)
    transfer_history = train_on_target(model, data, params, name="transfer", tracker=tracker, groups=groups)
    seed_everything(params.seed)
    scratch = DigitNet(params.model)
    scratch_history = train_on_target(scratch, data, params, name="scratch", tracker=tracker)

    transfer_accuracy = evaluate(model, *test, device=device)["accuracy"]
    scratch_accuracy = evaluate(scratch, *test, device=device)["accuracy"]
    metrics = {
        "train_images": len(data["train"]),
        "source_only_accuracy": source_only,
        "scratch_accuracy": scratch_accuracy,
        "transfer_accuracy": transfer_accuracy,
        "gain_points": round(100 * (transfer_accuracy - scratch_accuracy), 2),
        "transfer_val_accuracy": transfer_history[-1]["val_accuracy"],
        "scratch_val_accuracy": scratch_history[-1]["val_accuracy"],
    }
    log.info("target test accuracy: source-only %.4f, scratch %.4f, transfer %.4f (gain %+.2f points)",
             source_only, scratch_accuracy, transfer_accuracy, metrics["gain_points"])
    model.cpu().backbone.requires_grad_(True)
    save_checkpoint(model_out, model, stage="transfer", params=params.model_dump(mode="json"),
                    metrics={k: v for k, v in metrics.items() if isinstance(v, float)})
    write_history(history_out, {"transfer": transfer_history, "scratch": scratch_history})
    tracker.log_artifact(history_out, "history")
    tracker.log_torch_model(model, "transferred", example_input(data["test"]))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    parser = stage_parser("transfer", __doc__)
    parser.add_argument("--pretrained", type=Path, required=True, help="pretrained checkpoint (.pt)")
    parser.add_argument("--target", type=Path, required=True, help="target dataset (.npz) from ingest")
    parser.add_argument("--model-out", type=Path, required=True, help="transferred checkpoint (.pt) to write")
    parser.add_argument("--history-out", type=Path, required=True, help="per-epoch metrics (.csv) to write")

    def work(params: Params, args: argparse.Namespace, tracker: Tracker) -> dict[str, Any]:
        return run(params, pretrained=args.pretrained, target=args.target, model_out=args.model_out,
                   history_out=args.history_out, tracker=tracker)

    return stage_main("transfer", parser, work, argv)


if __name__ == "__main__":
    sys.exit(main())
