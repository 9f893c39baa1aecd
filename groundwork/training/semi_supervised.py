"""FixMatch (Sohn et al. 2020) as an objective of the shared training loop: besides the labelled batch, every step
draws `ratio` unlabelled images per labelled one from the target's pool; the model's prediction on the plain
(weak) view of each becomes its pseudo-label where the model is confident enough, and the model learns to predict
that label on a strongly augmented view. The labelled batch and the strong views go through one forward pass, so
BatchNorm sees them together, as in the paper; the plain views, whose predictions only give the pseudo-labels,
go through one of their own, in eval mode and without gradients (the backward pass then skips them)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from groundwork.training.loop import LOSSES, BatchAugment, Objective, prepare_batch


def fixmatch(pool: torch.Tensor, *, ratio: int, confidence: float, weight: float, strong: BatchAugment,
             labelled_augment: BatchAugment | None = None, loss: str = "cross_entropy") -> Objective:
    """`loss` (cross-entropy, or a LOSSES name) on the labelled batch (augmented by `labelled_augment`) plus
    `weight` times the same loss of strong views against the confident pseudo-labels of `ratio` unlabelled images
    per labelled one, drawn from `pool` (uint8 images) with the loop's generator.

    "Correct" counts the labelled predictions that match their label (the loop's accuracy is over the labelled
    batch)."""
    criterion = LOSSES[loss]

    def objective(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, int]:
        count = len(inputs)
        drawn = torch.randint(len(pool), (ratio * count,), generator=generator)
        weak = prepare_batch(pool[drawn], inputs.device)
        training = model.training
        model.eval()  # pseudo-labels as the model would predict now: BatchNorm's running statistics, no dropout
        with torch.no_grad():  # and no gradient: the backward pass skips this half of the images
            certainty, pseudo = functional.softmax(model(weak), dim=1).max(dim=1)
        model.train(training)
        confident = (certainty >= confidence).float()
        labelled = labelled_augment(inputs, generator) if labelled_augment is not None else inputs
        outputs = model(torch.cat([labelled, strong(weak, generator)]))
        supervised, strong_out = outputs[:count], outputs[count:]
        unlabelled = (criterion(strong_out, pseudo, reduction="none") * confident).mean()
        total = criterion(supervised, targets) + weight * unlabelled
        return total, int((supervised.argmax(1) == targets).sum())
    return objective
