"""A dataset's images in the pipeline's input format (`groundwork.data.canvas`, the contract every model takes),
with the settings of its side of the ingest params."""

from __future__ import annotations

import numpy as np

from groundwork.data import sources
from groundwork.data.canvas import IMAGE_SIDE, to_source_format
from groundwork.params.data import DataSource

CHUNK = 4096  # images formatted at a time: bounds the float copy of a large dataset


def format_images(images: sources.Images, *, max_value: float, cfg: DataSource) -> np.ndarray:
    """Every image in the pipeline's format, a chunk (or, for images of varied sizes, one size) at a time."""
    options = {"max_value": max_value, "size": cfg.size, "color": cfg.color, "invert": cfg.invert}
    if isinstance(images, np.ndarray):
        return np.concatenate([to_source_format(images[start:start + CHUNK], **options)
                               for start in range(0, len(images), CHUNK)])
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(index)
    formatted = np.empty((len(images), IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    for indices in by_shape.values():
        formatted[indices] = format_images(np.stack([images[i] for i in indices]), max_value=max_value, cfg=cfg)
    return formatted
