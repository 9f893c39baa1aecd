"""The pipeline's input format, the contract every model takes: gray, 0..1 (stored as uint8 0..255), the longer
side resized to a given size (aspect kept) and centred on a 28x28 canvas, light ink on black, as MNIST is."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional

from groundwork.data import sources
from groundwork.data.datasets import IMAGE_SIDE
from groundwork.params import DataSource

LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R 601 weights of R, G, B, as PIL's "L" mode uses
CHUNK = 4096  # images formatted at a time: bounds the float copy of a large dataset


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
