"""Batched image augmentation with independent random parameters for every image.

torchvision.transforms.v2 draws one set of random parameters per call, so a batched call would rotate a whole
batch by the same angle; per-image draws applied through one `affine_grid`/`grid_sample` keep the speed of
batched tensors without that correlation.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional

from tasks.params import AugmentParams


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(count, generator=generator) * (high - low) + low


def _gate(values: torch.Tensor, identity: float, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Keep each drawn value with `probability`, else use the identity value (no change for that image)."""
    keep = torch.rand(len(values), generator=generator) < probability
    return torch.where(keep, values, torch.full_like(values, identity))


def augment_batch(images: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Rotate, scale, translate, and change brightness and contrast of float images (N, 1, H, W) in 0..1."""
    count, p = len(images), params.probability
    angle = _gate(_uniform(count, -params.rotation_degrees, params.rotation_degrees, generator), 0.0, p, generator)
    scale = _gate(_uniform(count, *params.scale, generator), 1.0, p, generator)
    shift = _gate(_uniform(2 * count, -params.translate, params.translate, generator), 0.0, p, generator)
    brightness = _gate(_uniform(count, 1 - params.brightness, 1 + params.brightness, generator), 1.0, p, generator)
    contrast = _gate(_uniform(count, 1 - params.contrast, 1 + params.contrast, generator), 1.0, p, generator)

    # affine_grid maps output coordinates to input coordinates in [-1, 1]: the inverse of the transform.
    radians = angle * (math.pi / 180.0)
    cos, sin = torch.cos(radians) / scale, torch.sin(radians) / scale
    theta = torch.stack([
        torch.stack([cos, -sin, shift[:count] * 2.0], dim=1),
        torch.stack([sin, cos, shift[count:] * 2.0], dim=1),
    ], dim=1).to(images.device, images.dtype)
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    moved = functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    shape = (count, 1, 1, 1)
    mean = moved.mean(dim=(1, 2, 3), keepdim=True)
    contrast = contrast.view(shape).to(images.device, images.dtype)
    brightness = brightness.view(shape).to(images.device, images.dtype)
    return ((moved - mean) * contrast + mean).mul_(brightness).clamp_(0.0, 1.0)
