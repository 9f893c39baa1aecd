"""pretrain: train the CNN on the augmented source corpus with the optimizer and LR schedule from params,
validating every epoch, and save a self-describing checkpoint."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.checkpoint import save_checkpoint
from tasks.data import example_input, load_dataset
from tasks.io import atomic_path
from tasks.model import DigitNet
from tasks.params import Params
from tasks.stage import stage_main, stage_parser
from tasks.tracking import NullTracker, Tracker
from tasks.training import evaluate, fit, resolve_device, seed_everything

log = logging.getLogger(__name__)


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """Per-epoch metrics as CSV, the format DVC plots read."""
    with atomic_path(path) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def run(params: Params, *, train: Path, source: Path, model_out: Path, history_out: Path,
        tracker: Tracker | None = None) -> dict[str, Any]:
    """Pretrain on `train` (augmented), validate and test on `source`'s held-out splits; save the model."""
    tracker = tracker or NullTracker()
    train_set, train_digest = load_dataset(train, splits=("train",))
    held_out, source_digest = load_dataset(source, splits=("val", "test"))
    tracker.set_tags({"data_digest.augmented": train_digest, "data_digest.source": source_digest})
    device = resolve_device(params.device)
    seed_everything(params.seed)
    model = DigitNet(params.model)
    history = fit(model, train_set["train"].tensors(), held_out["val"].tensors(), params.pretrain, device=device,
                  seed=params.seed, desc="pretrain",
                  on_epoch=lambda epoch, metrics: tracker.log_metrics(metrics, step=epoch))
    test = evaluate(model, *held_out["test"].tensors(), device=device)
    last = history[-1]
    metrics = {"source_val_accuracy": last["val_accuracy"], "source_test_accuracy": test["accuracy"],
               "source_test_loss": test["loss"], "train_loss": last["train_loss"], "epochs": len(history)}
    model.cpu()
    save_checkpoint(model_out, model, stage="pretrain", params=params.model_dump(mode="json"), metrics=metrics)
    write_history(history_out, history)
    tracker.log_artifact(history_out, "history")
    tracker.log_torch_model(model, "pretrained", example_input(held_out["test"]))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    parser = stage_parser("pretrain", __doc__)
    parser.add_argument("--train", type=Path, required=True, help="augmented source training set (.npz)")
    parser.add_argument("--source", type=Path, required=True, help="source dataset with val/test splits (.npz)")
    parser.add_argument("--model-out", type=Path, required=True, help="checkpoint (.pt) to write")
    parser.add_argument("--history-out", type=Path, required=True, help="per-epoch metrics (.csv) to write")

    def work(params: Params, args: argparse.Namespace, tracker: Tracker) -> dict[str, Any]:
        return run(params, train=args.train, source=args.source, model_out=args.model_out,
                   history_out=args.history_out, tracker=tracker)

    return stage_main("pretrain", parser, work, argv)


if __name__ == "__main__":
    sys.exit(main())
