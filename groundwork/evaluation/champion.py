"""Which images a model learnt from, by content id, and the test images a champion can be scored on fairly."""

from __future__ import annotations

import hashlib
from collections.abc import Collection

import numpy as np

from groundwork.data.datasets import Dataset


def image_ids(images: np.ndarray) -> list[str]:
    """A content id per uint8 image (N, 28, 28): the first 16 hex digits of the SHA-256 of its pixels. Equal
    pixels, equal id, whichever split or run the image came from."""
    return [hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16] for image in images]


def learnt_from(dataset: Dataset) -> list[str]:
    """Sorted ids of every image of the target that a pipeline model may have learnt from or been selected on:
    every split but test (labelled training images, the unlabelled pool, validation)."""
    return sorted({image_id for name, split in dataset.items() if name != "test"
                   for image_id in image_ids(split.images)})


def unseen_mask(test_ids: list[str], seen: Collection[str] | None) -> np.ndarray:
    """Which test images a model that learnt from `seen` never saw (all of them when `seen` is None)."""
    if seen is None:
        return np.ones(len(test_ids), bool)
    return np.array([image_id not in seen for image_id in test_ids], bool)
