"""Low-rank decomposition: replace a large layer by two thin ones from a truncated SVD of its weight.

A linear layer W (out x in) becomes in -> r -> out with W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T); a k x k conv
becomes a k x k conv to r channels followed by a 1x1 conv, from the SVD of W reshaped to (out, in*k*k). The
rank r is the smallest that keeps `energy` of the squared singular values (the share of the weight's
Frobenius norm it keeps); a layer is factorised only where that saves parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from tasks.model import DigitNet, prunable_layers


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest rank whose leading singular values hold `energy` of the total squared sum."""
    squared = singular_values.double().square()
    kept = torch.cumsum(squared, 0) / squared.sum()
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype)).item()) + 1


def _thin_pair(layer: nn.Conv2d | nn.Linear, rank: int) -> nn.Sequential:
    """The two layers, uninitialised, that replace `layer` at `rank`."""
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return nn.Sequential(nn.Linear(layer.in_features, rank, bias=False),
                             nn.Linear(rank, layer.out_features, bias=has_bias))
    return nn.Sequential(
        nn.Conv2d(layer.in_channels, rank, layer.kernel_size, stride=layer.stride, padding=layer.padding, bias=False),
        nn.Conv2d(rank, layer.out_channels, 1, bias=has_bias),
    )


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def apply_factorization(model: DigitNet, ranks: dict[str, int]) -> DigitNet:
    """Give `model` the factorised structure `ranks` describes (weights to be loaded afterwards)."""
    for name, rank in ranks.items():
        _replace(model, name, _thin_pair(model.get_submodule(name), rank))
    model.factorized = dict(ranks)
    return model


@torch.no_grad()
def factorize(model: DigitNet, energy: float) -> dict[str, int]:
    """Factorise, in place, every conv and linear layer where the rank that keeps `energy` saves parameters;
    return the rank chosen for each layer factorised (by module name)."""
    names = {module: name for name, module in model.named_modules()}
    ranks: dict[str, int] = {}
    for layer, _ in prunable_layers(model):
        weight = layer.weight.detach()
        matrix = weight.flatten(1)
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        rank = rank_for_energy(s, energy)
        if rank * sum(matrix.shape) >= matrix.numel():
            continue  # two thin layers would be no smaller than the one they replace
        pair = _thin_pair(layer, rank)
        root = s[:rank].sqrt()
        pair[0].weight.copy_((root[:, None] * vh[:rank]).reshape(pair[0].weight.shape))
        pair[1].weight.copy_((u[:, :rank] * root).reshape(pair[1].weight.shape))
        if layer.bias is not None:
            pair[1].bias.copy_(layer.bias)
        _replace(model, names[layer], pair.to(weight.device))
        ranks[names[layer]] = rank
    model.factorized = {**model.factorized, **ranks}
    return ranks
