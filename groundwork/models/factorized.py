"""Factorised layers, part of what a model is: a conv or linear layer replaced by a thin pair at a given rank.

A linear layer (out x in) becomes in -> r -> out; a k x k conv becomes a k x k conv to r channels followed by a
1x1 conv. The ranks are part of a model's architecture (`DigitNet.factorized`), saved with its checkpoint, so
loading a factorised model needs this module and not the decomposition that chose the ranks.
"""

from __future__ import annotations

from torch import nn

from groundwork.models.digitnet import DigitNet


def thin_pair(layer: nn.Conv2d | nn.Linear, rank: int) -> nn.Sequential:
    """The two layers, uninitialised, that replace `layer` at `rank`."""
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return nn.Sequential(nn.Linear(layer.in_features, rank, bias=False),
                             nn.Linear(rank, layer.out_features, bias=has_bias))
    return nn.Sequential(
        nn.Conv2d(layer.in_channels, rank, layer.kernel_size, stride=layer.stride, padding=layer.padding, bias=False),
        nn.Conv2d(rank, layer.out_channels, 1, bias=has_bias),
    )


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` where the submodule called `name` (dotted) is."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def apply_factorization(model: DigitNet, ranks: dict[str, int]) -> DigitNet:
    """Give `model` the factorised structure `ranks` describes (weights to be loaded afterwards)."""
    for name, rank in ranks.items():
        replace_module(model, name, thin_pair(model.get_submodule(name), rank))
    model.factorized = dict(ranks)
    return model
