"""Arriving batches: the folder `data/incoming/` read as a list of batches in the models' input format, each
named by its content digest, so a batch delivered twice (under another name, too) counts once.

A batch is one `.npz` file holding an `images` array, or one folder of PNG/JPEG files. Images already in the
pipeline's format (uint8, 28x28) are taken as they are; anything else (another size, floats, colour) goes
through the ingest path's own formatting with the target side's settings, the same function that prepared the
training data. A file that cannot be read or has the wrong shape is set aside with its reason; the others
proceed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from groundwork.data.datasets import IMAGE_SIDE
from groundwork.data.formatting import format_images
from groundwork.data.untrusted import read_images, read_npz
from groundwork.params.data import DataSource

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_FORMATS = ("PNG", "JPEG")  # decoded by these PIL plugins only, whatever a file's name claims
ID_DIGITS = 12  # characters of the batch digest in an image id: unique enough for any stream, short to type


@dataclass(frozen=True)
class Batch:
    """One arrived batch: where it came from, its digest, and its images (uint8 (N, 28, 28))."""

    name: str
    digest: str
    images: np.ndarray

    def image_ids(self) -> list[str]:
        """One id per image, `<digest prefix>-<index>`: what the labelling queue and labels CSVs refer to."""
        return [f"{self.digest[:ID_DIGITS]}-{index:05d}" for index in range(len(self.images))]


@dataclass
class Arrivals:
    """The readable batches in arrival (name) order, and what was set aside or skipped, with reasons."""

    batches: list[Batch] = field(default_factory=list)
    set_aside: dict[str, str] = field(default_factory=dict)  # name -> why it could not be used
    duplicates: dict[str, str] = field(default_factory=dict)  # name -> the name of the batch it repeats


def batch_digest(images: np.ndarray) -> str:
    """SHA-256 of the formatted images (shape and bytes): the same images give the same digest, whatever the
    file was called or how it was encoded."""
    sha = hashlib.sha256(f"{images.dtype.str}/{images.shape}".encode())
    sha.update(np.ascontiguousarray(images).tobytes())
    return sha.hexdigest()


def in_model_format(images: np.ndarray, cfg: DataSource) -> np.ndarray:
    """Images as the models take them; ValueError naming the problem when they are not images at all."""
    if images.ndim not in (3, 4) or len(images) == 0 or min(images.shape[1:3]) < 1:
        raise ValueError(f"expected images (N, H, W) or (N, H, W, C) with N >= 1, got shape {images.shape}")
    if images.dtype == np.uint8 and images.shape[1:] == (IMAGE_SIDE, IMAGE_SIDE):
        return images
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise ValueError(f"expected numeric pixels, got {images.dtype}")
    if not np.isfinite(images).all():
        raise ValueError("pixels must be finite")
    max_value = 255.0 if np.issubdtype(images.dtype, np.integer) or images.max() > 1.0 else 1.0
    return format_images(images.astype(np.float32), max_value=max_value, cfg=cfg)


def _read_npz(path: Path) -> np.ndarray:
    try:
        arrays = read_npz(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"not a readable .npz file ({exc})") from None
    if "images" not in arrays:
        raise ValueError(f"no 'images' array (found {sorted(arrays)})")
    return arrays["images"]


def _read_folder(path: Path) -> list[np.ndarray]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} files")
    return read_images(files, formats=IMAGE_FORMATS)


def read_batch(path: Path, cfg: DataSource) -> Batch:
    """One batch file or folder in the models' format; ValueError with the reason when it cannot be used."""
    if path.is_dir():
        images = format_images(_read_folder(path), max_value=255.0, cfg=cfg)
    else:
        images = in_model_format(_read_npz(path), cfg)
    return Batch(name=path.name, digest=batch_digest(images), images=images)


def read_arrivals(folder: Path, cfg: DataSource, *, min_batch: int) -> Arrivals:
    """Every batch in `folder` (a missing folder has none), repeats and unusable files set aside with reasons."""
    arrivals = Arrivals()
    seen: dict[str, str] = {}
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    for path in entries:
        if path.name.startswith(".") or not (path.is_dir() or path.suffix == ".npz"):
            continue  # DVC's and editors' own files
        try:
            batch = read_batch(path, cfg)
        except ValueError as exc:
            arrivals.set_aside[path.name] = str(exc)
            continue
        if len(batch.images) < min_batch:
            arrivals.set_aside[path.name] = (f"{len(batch.images)} images: fewer than adaptive.monitor.min_batch "
                                             f"({min_batch}) to test for drift")
        elif batch.digest in seen:
            arrivals.duplicates[path.name] = seen[batch.digest]
        else:
            seen[batch.digest] = path.name
            arrivals.batches.append(batch)
    return arrivals


def images_by_id(batches: list[Batch]) -> dict[str, np.ndarray]:
    """Every arrived image under its id."""
    return {image_id: image for batch in batches for image_id, image in zip(batch.image_ids(), batch.images,
                                                                            strict=True)}
