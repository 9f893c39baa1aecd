"""The on-disk dataset format: uint8 images and int64 labels per split in one .npz, with a content digest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from groundwork.data.atomic import atomic_path
from groundwork.data.canvas import IMAGE_SIDE
from groundwork.data.untrusted import read_npz
from groundwork.errors import DataError

NUM_CLASSES = 10
SPLITS = ("train", "val", "test")



@dataclass(frozen=True)
class Split:
    """Images as uint8 (N, 28, 28) in 0..255 and labels as int64 (N,) in 0..9."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The split as torch tensors, still uint8: floats are made one batch at a time."""
        return torch.from_numpy(self.images), torch.from_numpy(self.labels)

    def images_tensor(self) -> torch.Tensor:
        """The images alone as a uint8 tensor (for label-free use)."""
        return torch.from_numpy(self.images)


Dataset = dict[str, Split]


def digest(dataset: Dataset) -> str:
    """SHA-256 over every split's name, dtype, shape and bytes: equal data, equal digest."""
    sha = hashlib.sha256()
    for name in sorted(dataset):
        for kind, array in (("images", dataset[name].images), ("labels", dataset[name].labels)):
            sha.update(f"{name}/{kind}/{array.dtype.str}/{array.shape}".encode())
            sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()


def _check_split(name: str, split: Split, source: str) -> None:
    images, labels = split.images, split.labels
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"{source}: split '{name}' images must be uint8 of shape (N, {IMAGE_SIDE}, {IMAGE_SIDE}), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.int64 or labels.ndim != 1:
        raise DataError(
            f"{source}: split '{name}' labels must be int64 of shape (N,), got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise DataError(f"{source}: split '{name}' has {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{source}: split '{name}' is empty")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(
            f"{source}: split '{name}' labels must lie in 0..{NUM_CLASSES - 1}, "
            f"got {labels.min()}..{labels.max()}"
        )


def save_dataset(path: Path | str, dataset: Dataset) -> str:
    """Validate and write a dataset atomically; return its digest."""
    for name, split in dataset.items():
        _check_split(name, split, str(path))
    content_digest = digest(dataset)
    arrays: dict[str, np.ndarray] = {"digest": np.array(content_digest)}
    for name, split in dataset.items():
        arrays[f"{name}_images"] = split.images
        arrays[f"{name}_labels"] = split.labels
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
    return content_digest


def load_dataset(path: Path | str, splits: tuple[str, ...] = SPLITS) -> tuple[Dataset, str]:
    """Read, validate and digest-check the named splits of a dataset file; return it with its digest."""
    source = str(path)
    try:
        stored = read_npz(Path(path))
    except FileNotFoundError:
        raise DataError(f"{source}: file not found (run the stage that writes it, e.g. `dvc repro`)") from None
    except ValueError as exc:
        raise DataError(f"{source}: corrupt or truncated data file ({exc})") from None
    if "digest" not in stored or stored["digest"].dtype.kind != "U":
        raise DataError(f"{source}: no content digest stored; not a groundwork dataset")
    dataset: Dataset = {}
    for name in stored:
        if name.endswith("_images"):
            split = name.removesuffix("_images")
            if f"{split}_labels" not in stored:
                raise DataError(f"{source}: split '{split}' has images but no labels")
            dataset[split] = Split(images=stored[name], labels=stored[f"{split}_labels"])
    for name, split in dataset.items():
        _check_split(name, split, source)
    content_digest = digest(dataset)
    if content_digest != str(stored["digest"]):
        raise DataError(f"{source}: content digest mismatch; the file was modified or corrupted")
    missing = [name for name in splits if name not in dataset]
    if missing:
        raise DataError(f"{source}: missing split(s) {missing}; found {sorted(dataset)}")
    return {name: dataset[name] for name in splits}, content_digest


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in 0..1, the models' input format."""
    return images.unsqueeze(1).float().div_(255.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float (N, 1, 28, 28) in 0..1 -> uint8 (N, 28, 28), rounding to the nearest level."""
    return images.squeeze(1).clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def example_input(split: Split) -> np.ndarray:
    """Two images in the models' input format (float32, (2, 1, 28, 28)): MLflow's input example. Two, not one:
    MLflow exports a PyTorch model with torch.export, which fixes a batch dimension of size 1 as a constant, so the
    logged model would take one image per call and no more (torch warned 'dimension inputs[0].shape[0] 0/1
    specialized' in every training stage)."""
    return to_float(torch.from_numpy(split.images[:2])).numpy()
