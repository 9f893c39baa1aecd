"""Fine-tuning a compressed model the way compress does it: the shared training loop on the target's labels (and,
with distillation, on the fp32 teacher's outputs, also over the unlabelled pool), each variant and round with a
seed of its own; channel removal and magnitude pruning in rounds, fine-tuned after each; low-rank factorisation;
and the packed recipe's shared weights with their codebooks fine-tuned. The compress stage and the benchmarks
(policy search, Deep Compression's LeNets) all compress through here, so their figures come from one recipe."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch

from groundwork.compression.lowrank import factorize
from groundwork.compression.packing import tie_to_codebooks, untie
from groundwork.compression.pruning import make_permanent, prune_to
from groundwork.compression.structured import prune_channels, toward
from groundwork.data.datasets import Dataset, Split
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params
from groundwork.params.training import ModelParams
from groundwork.tracking.runs import RunLog
from groundwork.training.distill import distillation, with_unlabelled
from groundwork.training.loop import Objective, derived_seed, epochs_logged_at, fit, seed_everything, validation
from groundwork.training.precision import autocast_dtype
from groundwork.training.transforms import online_augmentation

FineTune = Callable[[DigitNet, str, int], float]  # (model, variant, round) -> validation accuracy after fine-tuning

log = logging.getLogger(__name__)


def distilled_training(params: Params, data: Dataset, teacher: DigitNet,
                       device: torch.device) -> tuple[Split, Objective]:
    """What compress fine-tunes on and with: the target's training split (plus its unlabelled pool, with
    `distillation.unlabelled`) and the distillation objective from the fp32 `teacher`, augmented as
    `finetune.augmentation` says. The search's distilled reward trains the same way, for fewer epochs."""
    cfg = params.compress
    train = with_unlabelled(data["train"], data["pool"]) if cfg.distillation.unlabelled else data["train"]
    augment = online_augmentation(params.augment) if cfg.finetune.augmentation == "online" else None
    objective = distillation(teacher.to(device, memory_format=torch.channels_last), augment=augment,
                             weight=cfg.distillation.weight, temperature=cfg.distillation.temperature,
                             loss=cfg.finetune.loss)
    return train, objective


def fine_tuner(params: Params, data: Dataset, teacher: DigitNet, device: torch.device,
               tracker: RunLog) -> FineTune:
    """Fine-tuning as params say: the shared loop on the target's labels (plus, with distillation, the fp32
    teacher's outputs, also on the unlabelled pool), validated on the target's validation split."""
    cfg = params.compress
    train, objective = distilled_training(params, data, teacher, device)
    validate = validation(*data["val"].tensors(), device=device)
    precision = autocast_dtype(params.precision, device)

    def tune(model: DigitNet, variant: str, round_: int) -> float:
        # a seed of its own for every variant and round, global RNG (dropout) included: a variant's result does
        # not depend on which other variants ran before it, nor on how many rounds they took
        seed = derived_seed(params.seed, variant, round_)
        seed_everything(seed)
        with epochs_logged_at(logging.DEBUG):  # one line per round in the log, the epochs at DEBUG
            history = fit(model, train.tensors(), cfg.finetune, device=device, seed=seed, objective=objective,
                          validate=validate, desc=f"{variant} {round_}", precision=precision)
        tracker.log_metrics({f"variants.{variant}.round_val_accuracy": history[-1]["val_accuracy"]}, step=round_)
        log.info("%s round %d: val_accuracy %.4f after %d epoch(s)", variant, round_, history[-1]["val_accuracy"],
                 len(history))
        return history[-1]["val_accuracy"]
    return tune


def share(step: int, steps: int, target: float) -> float:
    """The compression reached after `step` of `steps` equal rounds towards `target`."""
    return target * step / steps


def channel_pruned(model: DigitNet, target: ModelParams, params: Params, tune: FineTune, variant: str) -> DigitNet:
    """Remove channels in equal rounds until every layer is as narrow as `target` says, fine-tuning after each
    (`structured`: `channels_kept` of every layer; `searched`: the widths the search chose per layer)."""
    rounds = params.compress.prune_iterations
    for step in range(1, rounds + 1):
        model = prune_channels(model, toward(params.model, target, share(step, rounds, 1.0)))
        tune(model, variant, step)
    return model


def magnitude_pruned(model: DigitNet, params: Params, tune: FineTune) -> DigitNet:
    """Raise unstructured sparsity in equal rounds to the target, fine-tuning after each."""
    cfg = params.compress
    for step in range(1, cfg.prune_iterations + 1):
        prune_to(model, share(step, cfg.prune_iterations, cfg.sparsity))
        tune(model, "pruned", step)
    make_permanent(model)
    return model


def low_rank(model: DigitNet, params: Params, tune: FineTune) -> DigitNet:
    """Factorise the layers where the energy threshold saves parameters, then fine-tune."""
    ranks = factorize(model, params.compress.lowrank_energy)
    log.info("low-rank factorisation at energy %.3f: %s", params.compress.lowrank_energy, ranks)
    tune(model, "lowrank", 1)
    return model


def shared_and_tuned(pruned: DigitNet, params: Params, tune: FineTune) -> DigitNet:
    """A copy of the pruned model with its weights shared through per-layer codebooks, the codebooks
    fine-tuned (pruned weights stay zero): what the packed file stores."""
    model = copy.deepcopy(pruned)
    tie_to_codebooks(model, params.compress.packed_bits)
    tune(model, "packed", 1)
    untie(model)
    return model.cpu()
