"""Low-rank decomposition: replace a large layer by two thin ones from a truncated SVD of its weight.

A linear layer W (out x in) becomes in -> r -> out with W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T); a k x k conv
becomes a k x k conv to r channels followed by a 1x1 conv, from the SVD of W reshaped to (out, in*k*k). The
pair itself is defined in groundwork.models.factorized. The rank r is the smallest that keeps `energy` of the
squared singular values (the share of the weight's Frobenius norm it keeps); a layer is factorised only where
that saves parameters.
"""

from __future__ import annotations

import torch

from groundwork.models.digitnet import DigitNet, prunable_layers
from groundwork.models.factorized import replace_module, thin_pair


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest rank whose leading singular values hold `energy` of the total squared sum."""
    squared = singular_values.double().square()
    kept = torch.cumsum(squared, 0) / squared.sum()
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype)).item()) + 1


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
        pair = thin_pair(layer, rank)
        root = s[:rank].sqrt()
        pair[0].weight.copy_((root[:, None] * vh[:rank]).reshape(pair[0].weight.shape))
        pair[1].weight.copy_((u[:, :rank] * root).reshape(pair[1].weight.shape))
        if layer.bias is not None:
            pair[1].bias.copy_(layer.bias)
        replace_module(model, names[layer], pair.to(weight.device))
        ranks[names[layer]] = rank
    model.factorized = {**model.factorized, **ranks}
    return ranks
