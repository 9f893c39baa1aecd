"""Structured pruning: remove whole channels (and embedding units), giving a physically smaller DigitNet, every
layer by the same share (`narrower`) or each by its own (`per_layer`, as the policy search chooses).

Unstructured zeros cost the same time on a CPU as the weights they replace; dropping channels shrinks every
matrix the runtime multiplies, so the model gets faster as well as smaller. Each layer keeps the channels whose
BatchNorm-folded filters have the largest norm (a channel whose BatchNorm scale is near zero contributes
nothing downstream, whatever its raw filter).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from groundwork.models.digitnet import DigitNet
from groundwork.params import IMAGE_SIDE, ModelParams

# Positions inside groundwork.models.digitnet's blocks: a conv block is (conv, bn, relu, conv, bn, relu, pool),
# the embedding (flatten, linear, bn, relu), the head (dropout, linear).
BLOCK_LAYERS = ((0, 1), (3, 4))
EMBED_LINEAR, EMBED_NORM, HEAD_LINEAR = 1, 2, 1


def narrower(arch: ModelParams, keep: float) -> ModelParams:
    """`arch` with `keep` of every conv's channels and of the embedding's units (rounded up), validated: a
    narrower net must still be one a checkpoint can describe."""
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


def _strongest(weight: torch.Tensor, norm: nn.BatchNorm1d | nn.BatchNorm2d, count: int) -> torch.Tensor:
    """Indices (ascending) of the `count` output units whose BatchNorm-folded weights have the largest norm."""
    scale = norm.weight.detach().abs() / torch.sqrt(norm.running_var + norm.eps)
    strength = weight.detach().flatten(1).norm(dim=1) * scale
    return strength.topk(count).indices.sort().values


def layers_with_norms(model: DigitNet) -> list[tuple[nn.Conv2d | nn.Linear, nn.Module]]:
    """Every prunable layer with the BatchNorm after it, in `ModelParams.layer_widths` order."""
    pairs = [(block[conv], block[norm]) for block in model.backbone.features for conv, norm in BLOCK_LAYERS]
    return [*pairs, (model.backbone.embed[EMBED_LINEAR], model.backbone.embed[EMBED_NORM])]


def _copy_norm(source: nn.Module, target: nn.Module, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(target, name).data.copy_(getattr(source, name).detach()[keep])
    target.num_batches_tracked.data.copy_(source.num_batches_tracked)


@torch.no_grad()
def prune_channels(model: DigitNet, arch: ModelParams) -> DigitNet:
    """A new DigitNet of the narrower `arch`, holding the strongest of `model`'s channels and units."""
    small = DigitNet(arch, num_classes=model.num_classes).eval()
    layers = layers_with_norms(model)
    inputs = torch.arange(1)  # the image's single grey channel
    for (conv, norm), (narrow, narrow_norm) in zip(layers[:-1], layers_with_norms(small)[:-1], strict=True):
        outputs = _strongest(conv.weight, norm, narrow.out_channels)
        narrow.weight.copy_(conv.weight[outputs][:, inputs])
        _copy_norm(norm, narrow_norm, outputs)
        inputs = outputs
    # flatten orders features channel by channel: channel c owns columns c*area .. (c+1)*area - 1
    area = (IMAGE_SIDE // 2 ** len(arch.channels)) ** 2
    columns = (inputs[:, None] * area + torch.arange(area)).flatten()
    linear, norm = layers[-1]
    units = _strongest(linear.weight, norm, arch.embedding_dim)
    small.backbone.embed[EMBED_LINEAR].weight.copy_(linear.weight[units][:, columns])
    _copy_norm(norm, small.backbone.embed[EMBED_NORM], units)
    head = model.head[HEAD_LINEAR]
    small.head[HEAD_LINEAR].weight.copy_(head.weight[:, units])
    small.head[HEAD_LINEAR].bias.copy_(head.bias)
    return small
