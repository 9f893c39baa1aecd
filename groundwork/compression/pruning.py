"""Global magnitude pruning: zero the smallest weights across all conv and linear layers at once."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from groundwork.models.digitnet import prunable_layers


def sparsity(model: nn.Module) -> float:
    """Share of zero weights among the prunable (conv and linear) weights."""
    weights = [getattr(module, name) for module, name in prunable_layers(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def prune_to(model: nn.Module, target: float) -> None:
    """Mask the globally smallest-magnitude weights so that `target` of all prunable weights are zero.

    Masks accumulate: weights pruned in an earlier round stay pruned (they are the smallest, at zero).
    """
    layers = prunable_layers(model)
    magnitudes = torch.cat([getattr(module, name).detach().abs().flatten() for module, name in layers])
    count = round(target * magnitudes.numel())
    if count == 0:
        return
    threshold = torch.kthvalue(magnitudes, count).values
    for module, name in layers:
        prune.custom_from_mask(module, name, mask=getattr(module, name).detach().abs() > threshold)


def keep_zeros(model: nn.Module) -> None:
    """Mask every prunable weight that is zero now, so that training leaves a pruned model's zeros at zero (until
    make_permanent folds the masks in)."""
    for module, name in prunable_layers(model):
        prune.custom_from_mask(module, name, mask=getattr(module, name).detach() != 0)


def make_permanent(model: nn.Module) -> None:
    """Fold the masks into the weights, leaving plain tensors with zeros (a normal state dict)."""
    for module, name in prunable_layers(model):
        if prune.is_pruned(module):
            prune.remove(module, name)
