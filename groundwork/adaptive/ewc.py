"""Elastic weight consolidation (Kirkpatrick et al. 2017, online form of Schwarz et al. 2018): the continual-
learning regulariser the adaptive bench measures the loop against. After each world, the weights are anchored
where they ended and each weight's importance is its diagonal Fisher information on that world's labelled images
(summed over worlds); learning the next world then pays `weight / 2 * sum(F * (w - anchor)^2)`, so the weights
earlier worlds needed move least."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from groundwork.data.datasets import to_float
from groundwork.training.loop import Objective


@dataclass(frozen=True)
class Consolidation:
    """Where the weights were anchored and how much each matters."""

    anchors: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor]

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """sum(F * (w - anchor)^2) over the anchored weights (zero at the anchors)."""
        terms = [(self.fisher[name] * (weight - self.anchors[name]) ** 2).sum()
                 for name, weight in model.named_parameters() if name in self.anchors]
        return torch.stack(terms).sum()


def fisher_diagonal(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The empirical Fisher's diagonal: each weight's squared gradient of the log-likelihood of the true label,
    image by image, averaged (uint8 images (N, 28, 28) as the model is trained on them)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = {name: torch.zeros_like(weight) for name, weight in model.named_parameters() if weight.requires_grad}
    inputs = to_float(images).to(device)
    for image, label in zip(inputs, labels.to(device), strict=True):
        model.zero_grad()
        functional.cross_entropy(model(image[None]), label[None]).backward()
        for name, weight in model.named_parameters():
            if weight.grad is not None:
                total[name] += weight.grad.detach() ** 2
    model.zero_grad()
    model.train(was_training)
    return {name: value / len(inputs) for name, value in total.items()}


def consolidate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                earlier: Consolidation | None = None) -> Consolidation:
    """Anchor the weights where they are now, their importance on this world's images added to the earlier
    worlds' (online EWC)."""
    fisher = fisher_diagonal(model, images, labels)
    if earlier is not None:
        fisher = {name: value + earlier.fisher[name] for name, value in fisher.items()}
    anchors = {name: weight.detach().clone() for name, weight in model.named_parameters() if name in fisher}
    return Consolidation(anchors, fisher)


def with_consolidation(objective: Objective, consolidation: Consolidation | None, weight: float) -> Objective:
    """`objective` plus the EWC penalty at `weight` (unchanged before the first world is consolidated)."""
    if consolidation is None:
        return objective

    def penalised(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, int]:
        loss, correct = objective(model, inputs, targets, generator)
        return loss + weight / 2 * consolidation.penalty(model), correct
    return penalised
