"""The input contract every model takes, in numpy alone: gray, 0..1, the longer side resized to a given size
(aspect kept) and centred on a 28x28 canvas, light ink on black, as MNIST lays its digits out.

numpy only, so the same function prepares training data in ingest and a request in the served model, whose
environment holds ONNX Runtime and numpy, not torch. The resampling is the triangle (bilinear) filter widened by
the scale factor when shrinking, the antialiasing PIL and torch's `interpolate(..., antialias=True)` apply.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIDE = 28  # the canvas: MNIST's 28x28
LUMINANCE = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 weights of R, G, B, as PIL's "L" mode uses


def to_gray(pixels: np.ndarray, color: str) -> np.ndarray:
    """Float (N, H, W, C) -> (N, H, W): one channel kept, three mixed by luminance or averaged."""
    if pixels.shape[-1] == 1:
        return pixels[..., 0]
    if pixels.shape[-1] != 3:
        raise ValueError(f"images with {pixels.shape[-1]} channels: expected 1 (gray) or 3 (RGB)")
    if color == "mean":
        return pixels.mean(axis=-1, dtype=np.float32)
    return pixels @ LUMINANCE


def _tap_span(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.float32]:
    """Each output pixel's first input pixel, its number of taps, its centre (in input pixels) and the
    triangle's half-width."""
    f32 = np.float32
    scale = f32(source) / f32(target)
    support = max(scale, f32(1.0))
    centres = scale * (np.arange(target, dtype=f32) + f32(0.5))
    first = np.maximum((centres - support + f32(0.5)).astype(np.int64), 0)
    count = np.minimum((centres + support + f32(0.5)).astype(np.int64), source) - first
    return first, count, centres, support


def _triangle(span: tuple[np.ndarray, np.ndarray, np.ndarray, np.float32], offsets: np.ndarray) -> np.ndarray:
    """The unnormalised (target, len(offsets)) weights of taps `offsets`, zero past each output's last tap."""
    f32 = np.float32
    first, count, centres, support = span
    distance = ((first[:, None] + offsets).astype(f32) - centres[:, None] + f32(0.5)) / support
    return np.where(offsets < count[:, None], np.maximum(f32(1.0) - np.abs(distance), f32(0.0)), f32(0.0))


def resampling_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of `target` output pixels, the first input pixel it reads and its (target, taps) weights:
    output pixel i is centred at scale * (i + 0.5) in input pixels, the triangle's support widened to the scale
    when shrinking, each row normalised to sum to one. float32 throughout, in the order torch computes them, so
    both give the same pixels (to the last bit, on every dataset the tests compare)."""
    span = _tap_span(source, target)
    weights = _triangle(span, np.arange(span[1].max()))
    totals = np.zeros(target, np.float32)
    for tap in weights.T:  # summed tap by tap, as torch does, before normalising
        totals += tap
    return span[0], (weights / totals[:, None]).astype(np.float32)


# Beyond this many taps per output pixel (a shrink by more than 128x, e.g. a 1 x 3,000,000 image a file declares)
# one Python step per tap would take seconds and the (target, taps) weights could take gigabytes: the taps are
# then weighed and summed a block at a time in float64 and rounded once, which differs from torch in the last bit
# only, on images no dataset or request of digits holds.
SEQUENTIAL_TAPS = 256
TAP_BLOCK = 1 << 16


def _resample_in_blocks(pixels: np.ndarray, span: tuple[np.ndarray, np.ndarray, np.ndarray, np.float32]
                        ) -> np.ndarray:
    first, target, taps = span[0], len(span[0]), int(span[1].max())
    weighed = np.zeros((*pixels.shape[:-1], target), np.float64)
    totals = np.zeros(target, np.float64)
    for start in range(0, taps, TAP_BLOCK):  # one block's gathered pixels and weights held at a time
        offsets = np.arange(start, min(start + TAP_BLOCK, taps))
        weights = _triangle(span, offsets)
        index = np.minimum(first[:, None] + offsets, pixels.shape[-1] - 1)  # padded taps have weight zero
        weighed += np.einsum("...tk,tk->...t", pixels[..., index], weights.astype(np.float64))
        totals += weights.sum(axis=1, dtype=np.float64)
    return (weighed / totals).astype(np.float32)


def resample_last_axis(pixels: np.ndarray, target: int) -> np.ndarray:
    """Float32 (..., W) -> (..., target): each output a weighted sum of its taps, accumulated tap by tap with a
    fused multiply-add (the product exact in float64, rounded once), as torch's vectorised kernel does."""
    span = _tap_span(pixels.shape[-1], target)
    if span[1].max() > SEQUENTIAL_TAPS:
        return _resample_in_blocks(pixels, span)
    first, weights = resampling_taps(pixels.shape[-1], target)
    index = np.minimum(first[:, None] + np.arange(weights.shape[1]), pixels.shape[-1] - 1)
    gathered = pixels[..., index]  # (..., target, taps); padded taps have weight zero
    total = (gathered[..., 0] * weights[:, 0]).astype(np.float32)
    for tap in range(1, weights.shape[1]):
        total = (total + gathered[..., tap].astype(np.float64) * weights[:, tap]).astype(np.float32)
    return total


def resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Float32 (N, H, W) resampled to (N, height, width): across the width, then down the height."""
    across = resample_last_axis(images, width)
    return resample_last_axis(across.swapaxes(1, 2), height).swapaxes(1, 2)


def fitted_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The image's size once its longer side is `size`, aspect kept (each side at least one pixel)."""
    longer = max(height, width)
    return max(1, round(height * size / longer)), max(1, round(width * size / longer))


def to_source_format(images: np.ndarray, *, max_value: float, size: int, color: str = "luminance",
                     invert: bool = False) -> np.ndarray:
    """Gray, scaled to 0..1, the longer side resized to `size` (aspect kept) and centred on a 28x28 canvas, as
    MNIST lays its digits out; `invert` turns dark ink on light paper into MNIST's light ink on black. uint8
    (N, 28, 28) out, 0..255."""
    pixels = np.ascontiguousarray(images, dtype=np.float32)
    if pixels.ndim == 4:
        pixels = to_gray(pixels, color)
    scaled = pixels / np.float32(max_value)
    height, width = scaled.shape[-2:]
    fitted = fitted_size(height, width, size)
    if fitted != (height, width):
        scaled = resize(scaled, *fitted)
    scaled = np.clip(scaled, 0.0, 1.0)
    if invert:
        scaled = 1.0 - scaled
    top, left = (IMAGE_SIDE - fitted[0]) // 2, (IMAGE_SIDE - fitted[1]) // 2
    canvas = np.zeros((len(scaled), IMAGE_SIDE, IMAGE_SIDE), np.float32)
    canvas[:, top:top + fitted[0], left:left + fitted[1]] = scaled
    return np.round(canvas * 255.0).astype(np.uint8)
