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
    """Give `model` the factorised structure `ranks` describes (weights to be loaded afterwards); ValueError for a
    name that is not a conv or linear layer of the model, or a rank outside 1..the layer's smaller side (ranks
    come from saved files, which may come from elsewhere)."""
    for name, rank in ranks.items():
        layer = model.get_submodule(name) if name and _has_submodule(model, name) else None
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            raise ValueError(f"factorised layer {name!r} is not a conv or linear layer of the model")
        full = (min(layer.in_features, layer.out_features) if isinstance(layer, nn.Linear)
                else min(layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1], layer.out_channels))
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
            raise ValueError(f"factorised layer {name!r}: rank {rank!r} outside 1..{full}")
        replace_module(model, name, thin_pair(layer, rank))
    model.factorized = dict(ranks)
    return model


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True
