"""Batched image augmentation with independent random parameters for every image.

torchvision.transforms.v2 draws one set of random parameters per call, so a batched call would rotate a whole
batch by the same angle; per-image draws applied through one `affine_grid`/`grid_sample` keep the speed of
batched tensors without that correlation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional

from groundwork.data.datasets import Split, to_float, to_uint8
from groundwork.params.data import AugmentParams, Blur, Erasing

CHUNK = 2048  # images per augmentation call: large enough to amortise, small enough for memory


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(count, generator=generator) * (high - low) + low


def _gate(values: torch.Tensor, identity: float, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Keep each drawn value with `probability`, else use the identity value (no change for that image)."""
    keep = torch.rand(len(values), generator=generator) < probability
    return torch.where(keep, values, torch.full_like(values, identity))


def _erase(images: torch.Tensor, cfg: Erasing, generator: torch.Generator) -> torch.Tensor:
    """Zero a random rectangle (area share from cfg.area, aspect ratio 1/2..2) in the chosen images."""
    count, _, height, width = images.shape
    area = _uniform(count, *cfg.area, generator) * height * width
    aspect = torch.exp(_uniform(count, -math.log(2.0), math.log(2.0), generator))
    box_h = (area * aspect).sqrt().clamp(1, height)
    box_w = (area / aspect).sqrt().clamp(1, width)
    top = torch.rand(count, generator=generator) * (height - box_h)
    left = torch.rand(count, generator=generator) * (width - box_w)
    chosen = torch.rand(count, generator=generator) < cfg.probability
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1)))
    mask = (inside & chosen.view(-1, 1, 1)).unsqueeze(1).to(images.device)
    return images.masked_fill(mask, 0.0)


def _blur(images: torch.Tensor, cfg: Blur, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur with a per-image sigma, as one grouped convolution over the batch."""
    count = len(images)
    sigma = _uniform(count, *cfg.sigma, generator)
    chosen = torch.rand(count, generator=generator) < cfg.probability
    radius = math.ceil(3 * cfg.sigma[1])
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    weights = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    weights = torch.where(chosen.view(-1, 1), weights, (offsets == 0).float().view(1, -1))  # identity kernel
    weights = weights / weights.sum(dim=1, keepdim=True)
    kernels = (weights.unsqueeze(2) * weights.unsqueeze(1)).unsqueeze(1).to(images.device, images.dtype)
    stacked = images.transpose(0, 1).contiguous()  # (1, N, H, W): one channel per image
    blurred = functional.conv2d(stacked, kernels, padding=radius, groups=count)
    return blurred.transpose(0, 1).contiguous(memory_format=torch.channels_last)


def augment_batch(images: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Rotate, scale, translate, change brightness and contrast, and erase, each image with its own draws.

    `images` are floats (N, 1, H, W) in 0..1 on any device; random draws come from `generator` (CPU), so
    the same seed gives the same augmentation on every device. Always computed in fp32, also inside a training
    step under bf16 autocast: the images a model sees do not depend on its arithmetic (and bf16 affine_grid
    measured 15x slower on the CPU).
    """
    with torch.autocast(images.device.type, enabled=False):
        return _augmented(images, params, generator)


def _augmented(images: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    count = len(images)
    rotation, scale, shift = params.rotation, params.scale, params.translate
    angle = _gate(_uniform(count, -rotation.degrees, rotation.degrees, generator), 0.0, rotation.probability,
                  generator)
    zoom = _gate(_uniform(count, *scale.range, generator), 1.0, scale.probability, generator)
    offset = _gate(_uniform(2 * count, -shift.fraction, shift.fraction, generator), 0.0, shift.probability,
                   generator)
    brightness = _gate(_uniform(count, 1 - params.brightness.magnitude, 1 + params.brightness.magnitude, generator),
                       1.0, params.brightness.probability, generator)
    contrast = _gate(_uniform(count, 1 - params.contrast.magnitude, 1 + params.contrast.magnitude, generator),
                     1.0, params.contrast.probability, generator)

    # affine_grid maps output coordinates to input coordinates in [-1, 1]: the inverse of the transform.
    radians = angle * (math.pi / 180.0)
    cos, sin = torch.cos(radians) / zoom, torch.sin(radians) / zoom
    theta = torch.stack([
        torch.stack([cos, -sin, offset[:count] * 2.0], dim=1),
        torch.stack([sin, cos, offset[count:] * 2.0], dim=1),
    ], dim=1).to(images.device, images.dtype)
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    moved = functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    shape = (count, 1, 1, 1)
    mean = moved.mean(dim=(1, 2, 3), keepdim=True)
    contrast = contrast.view(shape).to(images.device, images.dtype)
    brightness = brightness.view(shape).to(images.device, images.dtype)
    adjusted = ((moved - mean) * contrast + mean).mul_(brightness).clamp_(0.0, 1.0)
    if params.blur.probability > 0:
        adjusted = _blur(adjusted, params.blur, generator)
    return _erase(adjusted, params.erasing, generator) if params.erasing.probability > 0 else adjusted


def online_augmentation(params: AugmentParams) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """augment_batch bound to params: the per-batch hook of the training loop."""
    return lambda images, generator: augment_batch(images, params, generator)


TRANSFORMS = ("rotation", "scale", "translate", "brightness", "contrast", "blur", "erasing")


def strong_augmentation(params: AugmentParams) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """The strong view of semi-supervised training: every transform of `params` applied to every image (each at
    probability 1, erasing included), at the magnitudes `params` give."""
    strong = params.model_copy(update={name: getattr(params, name).model_copy(update={"probability": 1.0})
                                       for name in TRANSFORMS})
    return online_augmentation(strong)

def augmented_copies(split: Split, cfg: AugmentParams, *, seed: int) -> Split:
    """The originals followed by `cfg.copies` augmented copies of every image, labels alongside."""
    generator = torch.Generator().manual_seed(seed)
    images, labels = split.tensors()
    copies = [images]
    for _ in range(cfg.copies):
        copies.append(torch.cat([
            to_uint8(augment_batch(to_float(images[i:i + CHUNK]), cfg, generator))
            for i in range(0, len(images), CHUNK)
        ]))
    return Split(torch.cat(copies).numpy(), labels.repeat(cfg.copies + 1).numpy())
