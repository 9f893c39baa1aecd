"""Seeded, stratified splits of a labelled set, and the label budget drawn from a training pool."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from groundwork.data.datasets import NUM_CLASSES, Dataset, Split


def stratified_splits(images: np.ndarray, labels: np.ndarray, *, val_fraction: float, test_fraction: float,
                      seed: int) -> Dataset:
    """Seeded train/val/test splits that keep every class's share."""
    rest_x, test_x, rest_y, test_y = train_test_split(images, labels, test_size=test_fraction,
                                                      stratify=labels, random_state=seed)
    train_x, val_x, train_y, val_y = train_test_split(rest_x, rest_y, test_size=val_fraction / (1 - test_fraction),
                                                      stratify=rest_y, random_state=seed + 1)
    return {"train": Split(train_x, train_y), "val": Split(val_x, val_y), "test": Split(test_x, test_y)}


def label_budget(split: Split, per_class: int | None, *, seed: int, key: str = "ingest.labels_per_class") -> Split:
    """Keep `per_class` labelled images of every class (seeded draw); None keeps them all. `key` names the param
    the budget came from in the error raised when a class has fewer images."""
    if per_class is None:
        return split
    counts = np.bincount(split.labels, minlength=NUM_CLASSES)
    if per_class > counts.min():
        raise ValueError(
            f"{key}={per_class} exceeds the target training split: class "
            f"{int(counts.argmin())} has only {int(counts.min())} images"
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(split.labels == label), size=per_class, replace=False)
        for label in range(NUM_CLASSES)
    ]))
    return Split(split.images[chosen], split.labels[chosen])


def describe(dataset: Dataset) -> dict[str, Any]:
    """Counts per split and per class."""
    return {
        name: {
            "count": len(split),
            "per_class": {str(c): int(n) for c, n in enumerate(np.bincount(split.labels, minlength=NUM_CLASSES))},
        }
        for name, split in dataset.items()
    }
