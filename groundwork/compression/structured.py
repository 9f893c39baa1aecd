"""Structured pruning: remove whole channels (and embedding or hidden units), giving a physically smaller
DigitNet, every layer by the same share (`narrower`) or each by its own (`per_layer`, as the policy search
chooses).

Unstructured zeros cost the same time on a CPU as the weights they replace; dropping channels shrinks every
matrix the runtime multiplies, so the model gets faster as well as smaller. Which layers may be narrowed, and the
BatchNorm after each, the model itself describes (`DigitNet.prunable`), whatever its architecture. Each layer
keeps the units whose filters are strongest: by the norm of the BatchNorm-folded filter where there is a
BatchNorm (a channel whose BatchNorm scale is near zero contributes nothing downstream, whatever its raw filter),
by the norm of the filter itself where there is none (the MLP, LeNet-5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from groundwork.models.digitnet import DigitNet
from groundwork.params.training import ModelParams


def narrower(arch: ModelParams, keep: float) -> ModelParams:
    """`arch` with `keep` of every prunable layer's channels or units (rounded up), validated: a narrower net must
    still be one a checkpoint can describe."""
    return arch.with_widths([math.ceil(width * keep) for width in arch.layer_widths()])


def per_layer(arch: ModelParams, keeps: Sequence[float]) -> ModelParams:
    """`arch` with layer i (in `ModelParams.layer_widths` order) keeping share keeps[i] of its outputs, rounded
    down so the model never costs more than the shares say (the tolerance absorbs float error in w * (4 / w))."""
    return arch.with_widths([math.floor(width * keep + 1e-9) for width, keep in
                             zip(arch.layer_widths(), keeps, strict=True)])


def toward(start: ModelParams, end: ModelParams, fraction: float) -> ModelParams:
    """The architecture `fraction` of the way from `start` to the narrower `end`, layer by layer (widths rounded
    up, so a round never removes more than its share; `end` exactly at 1)."""
    return start.with_widths([math.ceil(wide - (wide - narrow) * fraction - 1e-9) for wide, narrow in
                              zip(start.layer_widths(), end.layer_widths(), strict=True)])


def unit_strengths(layer: nn.Conv2d | nn.Linear, norm: nn.Module | None) -> torch.Tensor:
    """How much each output unit of `layer` carries: its filter's norm, scaled by the BatchNorm's gain where
    there is one (BatchNorm folded into the filter)."""
    strength = layer.weight.detach().flatten(1).norm(dim=1)
    if norm is None:
        return strength
    scale = norm.weight.detach().abs() / torch.sqrt(norm.running_var + norm.eps)
    return strength * scale


def _strongest(layer: nn.Conv2d | nn.Linear, norm: nn.Module | None, count: int) -> torch.Tensor:
    """Indices (ascending) of the `count` strongest output units of `layer`."""
    return unit_strengths(layer, norm).topk(count).indices.sort().values


def _inputs(kept: torch.Tensor, outputs_before: int, layer: nn.Module) -> torch.Tensor:
    """The input columns of `layer` that the kept outputs of the layer before it feed: a flatten gives each
    channel `fan` consecutive columns, channel by channel (fan 1 where outputs feed inputs one to one)."""
    fan = layer.weight.shape[1] // outputs_before
    return (kept[:, None] * fan + torch.arange(fan)).flatten()


def _copy_norm(source: nn.Module, target: nn.Module, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(target, name).data.copy_(getattr(source, name).detach()[keep])
    target.num_batches_tracked.data.copy_(source.num_batches_tracked)


@torch.no_grad()
def prune_channels(model: DigitNet, arch: ModelParams) -> DigitNet:
    """A new DigitNet of the narrower `arch`, holding the strongest of `model`'s channels and units."""
    small = DigitNet(arch, num_classes=model.num_classes).eval()
    first = model.prunable()[0][0]
    kept, outputs_before = torch.arange(first.weight.shape[1]), first.weight.shape[1]  # every input pixel/channel
    for (layer, norm), (narrow, narrow_norm) in zip(model.prunable(), small.prunable(), strict=True):
        columns = _inputs(kept, outputs_before, layer)
        outputs = _strongest(layer, norm, narrow.weight.shape[0])
        narrow.weight.copy_(layer.weight[outputs][:, columns])
        if layer.bias is not None:
            narrow.bias.copy_(layer.bias[outputs])
        if norm is not None:
            _copy_norm(norm, narrow_norm, outputs)
        kept, outputs_before = outputs, layer.weight.shape[0]
    head, narrow_head = model.head[-1], small.head[-1]
    narrow_head.weight.copy_(head.weight[:, _inputs(kept, outputs_before, head)])
    narrow_head.bias.copy_(head.bias)
    return small
