"""transfer: the pretrained model with a new head or its own (a warm start), trained on the target label budget (as
a linear probe, a full fine-tune, or discriminatively with a lower backbone LR), on the target's unlabelled pool too
when semi-supervised; the same architecture trained from scratch on the same labels with the same optimizer steps
as the baseline; both reported with the gain, beside the pretrained model's own accuracy (source-only)."""

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
from groundwork.params import Params
from groundwork.tracking.runs import NullTracker, RunLog
from groundwork.training.distributed import is_main_process
from groundwork.training.transfer_learning import History, transfer_and_scratch

log = logging.getLogger(__name__)


def write_history(path: Path, histories: dict[str, History]) -> None:
    """One row per epoch with each model's metrics side by side (columns prefixed by model name)."""
    frames = [pd.DataFrame(h).set_index("epoch").add_prefix(f"{name}_") for name, h in histories.items()]
    with atomic_path(path) as tmp:
        pd.concat(frames, axis=1).reset_index().to_csv(tmp, index=False)


def run(params: Params, *, pretrained: Path, target: Path, model_out: Path, history_out: Path,
        tracker: RunLog | None = None) -> dict[str, Any]:
    """Transfer and the from-scratch baseline on the target's labelled split; save the transferred model.

    Under torchrun every rank trains; rank 0 alone saves and records the model."""
    tracker = tracker or NullTracker()
    data, digest = load_dataset(target, splits=("train", "val", "test", "pool"))  # pool: semi-supervised
    tracker.log_dataset("target", target, digest, context="input")
    model, scores, histories = transfer_and_scratch(pretrained, data, params, seed=params.seed, tracker=tracker)
    if not is_main_process():
        return scores
    metrics = {"mode": params.transfer.mode, "head": params.transfer.head,
               "semi_supervised": params.transfer.semi_supervised.method, "train_images": len(data["train"]), **scores,
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
