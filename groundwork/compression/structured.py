"""Structured pruning: remove whole channels (and embedding units), giving a physically smaller DigitNet.

Unstructured zeros cost the same time on a CPU as the weights they replace; dropping channels shrinks every
matrix the runtime multiplies, so the model gets faster as well as smaller. Each layer keeps the channels whose
BatchNorm-folded filters have the largest norm (a channel whose BatchNorm scale is near zero contributes
nothing downstream, whatever its raw filter).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from groundwork.data.datasets import IMAGE_SIDE
from groundwork.models.digitnet import DigitNet
from groundwork.params import ModelParams

# Positions inside groundwork.models.digitnet's blocks: a conv block is (conv, bn, relu, conv, bn, relu, pool),
# the embedding (flatten, linear, bn, relu), the head (dropout, linear).
BLOCK_LAYERS = ((0, 1), (3, 4))
EMBED_LINEAR, EMBED_NORM, HEAD_LINEAR = 1, 2, 1


def narrower(arch: ModelParams, keep: float) -> ModelParams:
    """`arch` with `keep` of every conv's channels and of the embedding's units (rounded up), validated: a
    narrower net must still be one a checkpoint can describe."""
    return ModelParams.model_validate({
        **arch.model_dump(),
        "channels": [math.ceil(width * keep) for width in arch.channels],
        "embedding_dim": math.ceil(arch.embedding_dim * keep),
    })


def _strongest(weight: torch.Tensor, norm: nn.BatchNorm1d | nn.BatchNorm2d, count: int) -> torch.Tensor:
    """Indices (ascending) of the `count` output units whose BatchNorm-folded weights have the largest norm."""
    scale = norm.weight.detach().abs() / torch.sqrt(norm.running_var + norm.eps)
    strength = weight.detach().flatten(1).norm(dim=1) * scale
    return strength.topk(count).indices.sort().values


def _copy_norm(source: nn.Module, target: nn.Module, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(target, name).data.copy_(getattr(source, name).detach()[keep])
    target.num_batches_tracked.data.copy_(source.num_batches_tracked)


@torch.no_grad()
def prune_channels(model: DigitNet, arch: ModelParams) -> DigitNet:
    """A new DigitNet of the narrower `arch`, holding the strongest of `model`'s channels and units."""
    small = DigitNet(arch, num_classes=model.num_classes).eval()
    inputs = torch.arange(1)  # the image's single grey channel
    for block, narrow in zip(model.backbone.features, small.backbone.features, strict=True):
        for (conv, norm), width in zip(BLOCK_LAYERS, (narrow[0].out_channels, narrow[3].out_channels), strict=True):
            outputs = _strongest(block[conv].weight, block[norm], width)
            narrow[conv].weight.copy_(block[conv].weight[outputs][:, inputs])
            _copy_norm(block[norm], narrow[norm], outputs)
            inputs = outputs
    # flatten orders features channel by channel: channel c owns columns c*area .. (c+1)*area - 1
    area = (IMAGE_SIDE // 2 ** len(arch.channels)) ** 2
    columns = (inputs[:, None] * area + torch.arange(area)).flatten()
    linear, norm = model.backbone.embed[EMBED_LINEAR], model.backbone.embed[EMBED_NORM]
    units = _strongest(linear.weight, norm, arch.embedding_dim)
    small.backbone.embed[EMBED_LINEAR].weight.copy_(linear.weight[units][:, columns])
    _copy_norm(norm, small.backbone.embed[EMBED_NORM], units)
    head = model.head[HEAD_LINEAR]
    small.head[HEAD_LINEAR].weight.copy_(head.weight[:, units])
    small.head[HEAD_LINEAR].bias.copy_(head.bias)
    return small
