"""How a candidate is scored during the search: the transferred model pruned to the candidate's widths, its
BatchNorm statistics re-estimated on unlabelled images ("adaptive BN", EagleEye, ECCV 2020), then its accuracy
on the validation split. No fine-tuning: scoring must cost a fraction of a second.

Without the recalibration a pruned network's BatchNorm layers normalise with the statistics of channels that are
gone, and the score ranks candidates by how little they disturbed those statistics instead of by how good they
are; EagleEye showed that ranking correlates poorly with accuracy after fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from groundwork.compression.structured import per_layer, prune_channels
from groundwork.models.digitnet import DigitNet
from groundwork.training.loop import EVAL_BATCH, loss_and_accuracy, prepare_batch


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, *, device: torch.device) -> nn.Module:
    """Replace every BatchNorm layer's running statistics with their plain average over `images` (uint8)."""
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # None: a cumulative average over every batch seen, not an exponential one
    model.train().to(device, memory_format=torch.channels_last)
    for start in range(0, len(images), EVAL_BATCH):
        model(prepare_batch(images[start:start + EVAL_BATCH], device))
    return model.eval()


class AdaptiveBNScorer:
    """Accuracy of the model pruned to given per-layer shares, after BatchNorm recalibration; a candidate whose
    rounded widths were scored before is not scored again (the result would be the same)."""

    def __init__(self, model: DigitNet, calibration: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor], *,
                 device: torch.device) -> None:
        self.model = model.cpu().eval()
        self.calibration = calibration
        self.val = val
        self.device = device
        self._scores: dict[tuple[int, ...], float] = {}

    def __call__(self, keeps: Sequence[float]) -> float:
        arch = per_layer(self.model.arch, keeps)
        key = arch.layer_widths()
        if key not in self._scores:
            pruned = recalibrate_batchnorm(prune_channels(self.model, arch), self.calibration, device=self.device)
            self._scores[key] = loss_and_accuracy(pruned, *self.val, device=self.device)["accuracy"]
        return self._scores[key]
