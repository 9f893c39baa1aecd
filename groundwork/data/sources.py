"""Real datasets for ingest: torchvision's datasets, read by torchvision's own loaders from their on-disk formats,
and ImageFolder trees of a user's own images. Nothing is downloaded unless the params say `download: true`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundwork.data.datasets import NUM_CLASSES
from groundwork.data.untrusted import read_images
from groundwork.errors import DataError
from groundwork.params.data import DataSource

log = logging.getLogger(__name__)

# Raw images: one uint8 array (N, H, W) or (N, H, W, C), or a list of (H, W, C) arrays when sizes vary.
Images = np.ndarray | list[np.ndarray]

_IDX = "{train,t10k}-{images-idx3,labels-idx1}-ubyte"


@dataclass(frozen=True)
class TorchvisionSet:
    """How to read one torchvision dataset: its class, the parts to combine, and where it keeps its files."""

    class_name: str
    layout: str  # the files torchvision reads under root, for error messages; <argument> is filled in
    parts: tuple[dict[str, Any], ...] = ({"train": True}, {"train": False})
    extra: dict[str, str] = field(default_factory=dict)  # constructor argument -> DataSource field
    labels: str = "targets"  # the attribute holding the labels
    channels_first: bool = False  # SVHN keeps (N, C, H, W)
    transposed: bool = False  # EMNIST's files store each image transposed


TORCHVISION: dict[str, TorchvisionSet] = {
    "mnist": TorchvisionSet("MNIST", f"MNIST/raw/{_IDX}"),
    "fashion_mnist": TorchvisionSet("FashionMNIST", f"FashionMNIST/raw/{_IDX}"),
    "kmnist": TorchvisionSet("KMNIST", f"KMNIST/raw/{_IDX}"),
    "emnist": TorchvisionSet("EMNIST", "EMNIST/raw/emnist-<split>-{train,test}-{images-idx3,labels-idx1}-ubyte",
                             extra={"split": "emnist_split"}, transposed=True),
    "usps": TorchvisionSet("USPS", "usps.bz2 and usps.t.bz2"),
    "cifar10": TorchvisionSet("CIFAR10", "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"),
    "svhn": TorchvisionSet("SVHN", "train_32x32.mat and test_32x32.mat",
                           parts=({"split": "train"}, {"split": "test"}), labels="labels", channels_first=True),
}


def _as_numpy(values: Any) -> np.ndarray:
    return values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def check_classes(count: int, labels: np.ndarray, *, key: str, cfg: DataSource) -> None:
    """Refuse a dataset whose classes do not map onto the model's 10-class head."""
    if count != NUM_CLASSES or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(
            f"{key}.dataset={cfg.dataset} in {cfg.folder}: {count} classes (labels {labels.min()}..{labels.max()}); "
            f"the model's head has {NUM_CLASSES} classes, labelled 0..{NUM_CLASSES - 1}"
        )


def load_torchvision(cfg: DataSource, *, key: str) -> tuple[np.ndarray, np.ndarray]:
    """A torchvision dataset's train and test parts combined: uint8 images (N, H, W[, C]) and int64 labels."""
    import torchvision

    spec = TORCHVISION[cfg.dataset]
    extra = {argument: getattr(cfg, name) for argument, name in spec.extra.items()}
    layout = spec.layout
    for argument, value in extra.items():
        layout = layout.replace(f"<{argument}>", value)
    images, labels, declared = [], [], None
    for part in spec.parts:
        try:
            dataset = getattr(torchvision.datasets, spec.class_name)(str(cfg.folder), download=cfg.download,
                                                                     **part, **extra)
        except (RuntimeError, OSError) as exc:  # torchvision's "Dataset not found", a missing file, a failed download
            raise DataError(_unavailable(cfg, key=key, layout=layout, reason=exc)) from exc
        images.append(_as_numpy(dataset.data))
        labels.append(_as_numpy(getattr(dataset, spec.labels)))
        declared = getattr(dataset, "classes", None)  # USPS declares none: count the labels instead
    stacked, all_labels = np.concatenate(images), np.concatenate(labels).astype(np.int64)
    classes = len(declared) if declared is not None else len(np.unique(all_labels))
    if spec.channels_first:
        stacked = stacked.transpose(0, 2, 3, 1)
    if spec.transposed:
        stacked = stacked.transpose(0, 2, 1)
    check_classes(classes, all_labels, key=key, cfg=cfg)
    return np.ascontiguousarray(stacked), all_labels


def _unavailable(cfg: DataSource, *, key: str, layout: str, reason: Exception) -> str:
    if cfg.download:
        return (f"{key}.dataset={cfg.dataset}: could not download it into {cfg.folder} ({reason}); without "
                f"network access, put the files there ({layout}) and set {key}.download: false")
    return (f"{key}.dataset={cfg.dataset}: files not found or corrupt in {cfg.folder} (torchvision reads {layout} "
            f"there: {reason}); put them there, point {key}.root at them, or set {key}.download: true to let "
            f"torchvision download them")


def load_image_folder(cfg: DataSource, *, key: str) -> tuple[list[np.ndarray], np.ndarray]:
    """root/<class>/<image> (PNG, JPEG, ...) as RGB uint8 arrays of any size, labelled by sorted class folder."""
    from torchvision.datasets import ImageFolder

    try:
        dataset = ImageFolder(str(cfg.folder))
    except FileNotFoundError as exc:  # no such folder, no class folders, or a class folder without images
        raise DataError(f"{key}.dataset=image_folder: {exc} (the folder is {key}.root={cfg.folder}; it needs one "
                        f"sub-folder of images per class)") from exc
    labels = np.asarray(dataset.targets, dtype=np.int64)
    check_classes(len(dataset.classes), labels, key=key, cfg=cfg)
    # each file opened as RGB, as torchvision's loader does (gray files come back with three equal channels), with
    # its declared size checked before it is decoded
    try:
        images = read_images([Path(path) for path, _ in dataset.samples])
    except ValueError as exc:
        raise DataError(f"{key}.dataset=image_folder: {exc}") from None
    log.info("%s: %d images in %d class folders %s", cfg.folder, len(images), len(dataset.classes), dataset.classes)
    return images, labels


def load(cfg: DataSource, *, key: str) -> tuple[Images, np.ndarray]:
    """The images and labels of a real dataset (not the embedded one), as read from cfg.folder."""
    if cfg.dataset == "image_folder":
        return load_image_folder(cfg, key=key)
    return load_torchvision(cfg, key=key)


def take(images: Images, indices: Sequence[int] | np.ndarray) -> Images:
    """The chosen images, in the given order, from an array or a list."""
    return images[indices] if isinstance(images, np.ndarray) else [images[i] for i in indices]
