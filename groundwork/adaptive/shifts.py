"""Named changes of the input distribution, for a simulated stream of arriving images: what the world does to a
deployed digit model (scans rotated, pens thicker, sensors noisier, ink fainter, other digits more common).

Each shift takes uint8 images (N, 28, 28) and a strength in the shift's own unit (see SHIFT_UNITS) and returns
uint8 images of the same shape; the class-prior shift instead changes which images are drawn (see
`class_prior_weights`). Every draw comes from the generator passed in, so a seed gives the same stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional

from groundwork.data.datasets import NUM_CLASSES, to_float, to_uint8

ImageShift = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]


def rotate(images: torch.Tensor, degrees: float, generator: torch.Generator) -> torch.Tensor:
    """Every image turned by `degrees`, clockwise or anticlockwise at random (scans fed in askew)."""
    floats = to_float(images)
    sign = torch.randint(0, 2, (len(images),), generator=generator).float() * 2 - 1
    radians = sign * degrees * math.pi / 180.0
    cos, sin = torch.cos(radians), torch.sin(radians)
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = functional.affine_grid(theta, list(floats.shape), align_corners=False)
    return to_uint8(functional.grid_sample(floats, grid, mode="bilinear", padding_mode="zeros", align_corners=False))


def thicken(images: torch.Tensor, pixels: float, generator: torch.Generator) -> torch.Tensor:
    """Strokes widened by `pixels` on each side (grey dilation: a broader pen); rounded to whole pixels."""
    radius = round(pixels)
    if radius == 0:
        return images.clone()
    floats = to_float(images)
    return to_uint8(functional.max_pool2d(floats, 2 * radius + 1, stride=1, padding=radius))


def add_noise(images: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian sensor noise of standard deviation `std` (pixels in 0..1), clipped to the valid range."""
    floats = to_float(images)
    return to_uint8(floats + std * torch.randn(floats.shape, generator=generator))


def fade(images: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    """Ink faded to `factor` of its brightness on a background lifted by the same amount (a worn printer)."""
    floats = to_float(images)
    return to_uint8(floats * factor + (1.0 - factor) * 0.5)


IMAGE_SHIFTS: dict[str, ImageShift] = {"rotation": rotate, "thickness": thicken, "noise": add_noise,
                                       "contrast": fade}
SHIFT_UNITS = {"none": "unused", "rotation": "degrees", "thickness": "pixels of dilation",
               "noise": "noise std in 0..1", "contrast": "ink brightness kept (1: unchanged)",
               "class_prior": "share of each window drawn from classes 0-4"}
SHIFT_NAMES = tuple(SHIFT_UNITS)


def apply_shift(name: str, strength: float, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`images` under the named image shift; unchanged for `none` and `class_prior` (a change of draws)."""
    shift = IMAGE_SHIFTS.get(name)
    return images.clone() if shift is None else shift(images, strength, generator)


def class_prior_weights(labels: np.ndarray, share_low: float) -> np.ndarray:
    """Sampling weights over images that put `share_low` of a window on classes 0-4 (half the classes), the
    rest on 5-9; summing to 1."""
    low = labels < NUM_CLASSES // 2
    weights = np.where(low, share_low / max(low.sum(), 1), (1.0 - share_low) / max((~low).sum(), 1))
    return weights / weights.sum()
