"""The source corpus and the target task as the params describe them: read (embedded, torchvision or an image
folder), brought to the pipeline's format, capped, split, and the target's label budget drawn."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import numpy as np
from sklearn.model_selection import train_test_split

from groundwork.data import sources
from groundwork.data.datasets import Dataset
from groundwork.data.embedded import TARGET_MAX_VALUE, UINT8_MAX_VALUE, load_source_raw, load_target_raw
from groundwork.data.formatting import format_images
from groundwork.data.splits import label_budget, stratified_splits
from groundwork.params.data import DataSource, IngestParams

log = logging.getLogger(__name__)
Side = Literal["source", "target"]

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
