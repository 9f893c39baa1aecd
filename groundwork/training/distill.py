"""Knowledge distillation (Hinton et al. 2015): a compressed student learns the fp32 teacher's softened outputs
as well as the labels, and can learn from unlabelled images, where only the teacher speaks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from groundwork.data.datasets import Split
from groundwork.training.loop import LOSSES, BatchAugment, Objective, supervised

UNLABELLED = -1  # label of an image whose label is not used (cross-entropy ignores it)


def with_unlabelled(labelled: Split, unlabelled: Split) -> Split:
    """The labelled images followed by `unlabelled`'s images with their labels dropped."""
    hidden = np.full(len(unlabelled), UNLABELLED, dtype=labelled.labels.dtype)
    return Split(np.concatenate([labelled.images, unlabelled.images]), np.concatenate([labelled.labels, hidden]))


def distillation(teacher: nn.Module | None, *, weight: float, temperature: float,
                 augment: BatchAugment | None = None, loss: str = "cross_entropy") -> Objective:
    """(1 - weight) * `loss` (cross-entropy, or a LOSSES name) on the labelled images + weight * T^2 *
    KL(teacher || student) at temperature T on every image; without a teacher or at weight 0, plain supervised
    training.

    "Correct" counts predictions that match the label, or the teacher's prediction where there is no label.
    """
    if teacher is None or weight == 0.0:
        return supervised(augment, loss)
    teacher.eval()
    criterion = LOSSES[loss]

    def objective(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, int]:
        if augment is not None:
            inputs = augment(inputs, generator)
        with torch.no_grad():
            guide = teacher(inputs)
        outputs = model(inputs)
        soft = functional.kl_div(functional.log_softmax(outputs / temperature, dim=1),
                                 functional.log_softmax(guide / temperature, dim=1), log_target=True,
                                 reduction="batchmean") * temperature ** 2
        labelled = targets != UNLABELLED
        hard = criterion(outputs[labelled], targets[labelled]) if labelled.any() else soft * 0
        expected = torch.where(labelled, targets, guide.argmax(1))
        return (1 - weight) * hard + weight * soft, int((outputs.argmax(1) == expected).sum())
    return objective
