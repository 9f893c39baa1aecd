"""Which unlabelled images are worth a person's time: uncertainty sampling (entropy or margin of the softmax, or
BALD with Monte-Carlo dropout, Gal et al. 2017), against random picks as the baseline."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from groundwork.training.loop import logits_of, prepare_batch

EPSILON = 1e-12


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of class probabilities."""
    return -(probabilities * probabilities.clamp_min(EPSILON).log()).sum(-1)


@torch.no_grad()
def mc_dropout_probabilities(model: nn.Module, images: torch.Tensor, samples: int,
                             generator: torch.Generator) -> torch.Tensor:
    """Softmax outputs (samples, N, classes) with dropout left on and BatchNorm frozen (eval statistics)."""
    model.eval()
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    if not dropouts:
        raise ValueError("bald needs a model with dropout (model.dropout > 0)")
    for layer in dropouts:
        layer.train()
    state = torch.get_rng_state()
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
    try:
        inputs = prepare_batch(images, torch.device("cpu"))
        return torch.stack([model(inputs).softmax(-1) for _ in range(samples)])
    finally:
        torch.set_rng_state(state)
        model.eval()


def informativeness(strategy: str, model: nn.Module, images: torch.Tensor, *, mc_samples: int,
                    generator: torch.Generator) -> torch.Tensor:
    """A score per image, higher meaning more worth labelling, under `strategy` (random: random scores)."""
    if strategy == "random":
        return torch.rand(len(images), generator=generator)
    if strategy == "bald":
        samples = mc_dropout_probabilities(model, images, mc_samples, generator)
        # mutual information between the prediction and the weights: disagreement between dropout samples
        return entropy(samples.mean(0)) - entropy(samples).mean(0)
    probabilities = logits_of(model, images, device=torch.device("cpu")).softmax(-1)
    if strategy == "entropy":
        return entropy(probabilities)
    if strategy == "margin":
        top = probabilities.topk(2, dim=-1).values
        return -(top[:, 0] - top[:, 1])  # a small margin between the two likeliest classes: informative
    raise ValueError(f"unknown selection strategy {strategy!r}")


def pick(scores: torch.Tensor, count: int) -> np.ndarray:
    """Indices of the `count` highest scores, highest first (ties broken by index, so picks are stable)."""
    order = np.lexsort((np.arange(len(scores)), -scores.numpy()))
    return order[:count]
