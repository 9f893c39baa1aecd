"""How a candidate is scored during the search (`search.reward`): the transferred model pruned to the candidate's
widths, its BatchNorm statistics re-estimated on unlabelled images ("adaptive BN", EagleEye, ECCV 2020), then
either

- `adaptive_bn`: its accuracy on the validation split at once, in fp32 (a fraction of a second), or
- `distilled`: its accuracy on the validation split after a short distillation fine-tune (`search.reward_epochs`
  of compress's own fine-tuning recipe), in the precision it ships in: exported and quantized to int8 as compress
  quantizes `searched_int8`, run by ONNX Runtime (HAQ, Wang et al. 2019, rewards after a short fine-tune).

Without the recalibration a pruned network's BatchNorm layers normalise with the statistics of channels that are
gone, and the score ranks candidates by how little they disturbed those statistics instead of by how good they
are; EagleEye showed that ranking correlates poorly with accuracy after fine-tuning. Adaptive BN alone still
measures damage rather than what fine-tuning recovers: `bench/reward_rank.py` measures how well each reward ranks
candidates as compress's full recipe does.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groundwork.compression.export import (
    calibration_images,
    export_onnx,
    fp32_cells,
    onnx_accuracy,
    quantize_int8,
)
from groundwork.compression.finetuning import distilled_training
from groundwork.compression.structured import per_layer, prune_channels
from groundwork.data.datasets import Dataset
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params
from groundwork.search.methods import Candidate
from groundwork.training.loop import (
    EVAL_BATCH,
    derived_seed,
    epochs_logged_at,
    fit,
    loss_and_accuracy,
    prepare_batch,
    seed_everything,
)
from groundwork.training.precision import autocast_dtype


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
        self._scores: dict[tuple[Any, ...], float] = {}

    def recalibrated(self, keeps: Sequence[float]) -> nn.Module:
        """The model pruned to `keeps`, its BatchNorm statistics re-estimated."""
        pruned = prune_channels(self.model, per_layer(self.model.arch, keeps))
        return recalibrate_batchnorm(pruned, self.calibration, device=self.device)

    def score(self, keeps: Sequence[float], precisions: Sequence[str]) -> float:
        """The accuracy in fp32, whatever `precisions` the network would ship in."""
        return loss_and_accuracy(self.recalibrated(keeps), *self.val, device=self.device)["accuracy"]

    def key(self, keeps: Sequence[float], precisions: Sequence[str]) -> tuple[Any, ...]:
        """What makes two candidates score alike: their widths."""
        return per_layer(self.model.arch, keeps).layer_widths()

    def __call__(self, keeps: Sequence[float], precisions: Sequence[str]) -> float:
        key = self.key(keeps, precisions)
        if key not in self._scores:
            self._scores[key] = self.score(keeps, precisions)
        return self._scores[key]

    def unscored(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """The candidates that would be scored if called now: the first of each key not scored yet, in order."""
        todo: dict[tuple[Any, ...], Candidate] = {}
        for keeps, precisions in candidates:
            todo.setdefault(self.key(keeps, precisions), (keeps, precisions))
        return [candidate for key, candidate in todo.items() if key not in self._scores]

    def remember(self, candidates: Sequence[Candidate], scores: Sequence[float]) -> None:
        """Take the scores of `candidates` computed elsewhere (by a scorer of the same model, params and data)."""
        for (keeps, precisions), score in zip(candidates, scores, strict=True):
            self._scores[self.key(keeps, precisions)] = score


class DistilledScorer(AdaptiveBNScorer):
    """Accuracy in int8 (ONNX Runtime, quantized as compress quantizes) of the model pruned to given shares,
    recalibrated, then fine-tuned for `search.reward_epochs` by compress's distillation recipe from the unpruned
    model; seeded by the candidate's widths, so a candidate scores the same whichever method drew it and when."""

    def __init__(self, model: DigitNet, params: Params, data: Dataset, *, device: torch.device) -> None:
        super().__init__(model, data["pool"].tensors()[0][:params.search.calibration_images], data["val"].tensors(),
                         device=device)
        self.params = params
        self.split = data["val"]
        self.train, self.objective = distilled_training(params, data, copy.deepcopy(self.model), device)
        self.recipe = params.compress.finetune.model_copy(update={
            "epochs": params.search.reward_epochs, "early_stopping": 0, "restore_best": False})
        self.int8_calibration = calibration_images(data, params.compress.calibration_images)
        self.precision = autocast_dtype(params.precision, device)

    def key(self, keeps: Sequence[float], precisions: Sequence[str]) -> tuple[Any, ...]:
        """Widths and precisions: the same widths in other precisions ship (and score) differently."""
        return (*per_layer(self.model.arch, keeps).layer_widths(), *precisions)

    def score(self, keeps: Sequence[float], precisions: Sequence[str]) -> float:
        """The accuracy after the short fine-tune, each cell in its precision of `precisions` (the prunable
        layers, then the head; the fp32 ones left out of quantization)."""
        model = self.recalibrated(keeps)
        seed = derived_seed(self.params.seed, "reward", *per_layer(self.model.arch, keeps).layer_widths())
        seed_everything(seed)
        with epochs_logged_at(logging.DEBUG):
            fit(model, self.train.tensors(), self.recipe, device=self.device, seed=seed, objective=self.objective,
                desc="reward", precision=self.precision)
        with tempfile.TemporaryDirectory() as scratch:
            fp32, int8 = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
            export_onnx(model, fp32)
            quantize_int8(fp32, int8, self.int8_calibration, self.params.compress.quantization,
                          fp32_layers=fp32_cells(precisions))
            return onnx_accuracy(int8, self.split)


def make_scorer(params: Params, model: DigitNet, data: Dataset, *, device: torch.device) -> AdaptiveBNScorer:
    """The scorer `search.reward` names, for `model` (the transferred one) on `data` (the target's splits: val and
    pool, and train for the distilled reward)."""
    if params.search.reward == "distilled":
        return DistilledScorer(model, params, data, device=device)
    return AdaptiveBNScorer(model, data["pool"].tensors()[0][:params.search.calibration_images],
                            data["val"].tensors(), device=device)
