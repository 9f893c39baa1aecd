"""Learning the new distribution without forgetting the old: the champion's fp32 model fine-tuned, through the
shared training loop, on the labels it has not learnt yet mixed with a replay buffer of earlier labelled images
(target, source, and the loop's labels it learnt), the standard cheap remedy for catastrophic forgetting."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from groundwork.compression.pruning import keep_zeros, make_permanent
from groundwork.data.datasets import Split
from groundwork.models.digitnet import DigitNet
from groundwork.params.adaptive import AdaptParams
from groundwork.params.data import AugmentParams
from groundwork.training.loop import Objective, derived_seed, fit, seed_everything, supervised
from groundwork.training.transforms import online_augmentation


def replay_buffer(target_train: Split, source_train: Split, cfg: AdaptParams, *, seed: int,
                  learnt_labels: Split | None = None) -> Split:
    """Up to `replay_target` labelled target images, `replay_source` source images and `replay_learnt` of the
    loop's labels the champion already learnt, drawn with a seed: the buffer's size does not grow with the labels
    given so far, so neither does an iteration's cost."""
    rng = np.random.default_rng(derived_seed(seed, "replay"))
    parts = [split for split, count in ((target_train, cfg.replay_target), (source_train, cfg.replay_source),
                                        *([(learnt_labels, cfg.replay_learnt)] if learnt_labels else []))
             for split in [_draw(split, count, rng)] if len(split)]
    if not parts:
        return Split(np.zeros((0, *target_train.images.shape[1:]), np.uint8), np.zeros(0, np.int64))
    return Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


def _draw(split: Split, count: int, rng: np.random.Generator) -> Split:
    chosen = np.sort(rng.choice(len(split), size=min(count, len(split)), replace=False))
    return Split(split.images[chosen], split.labels[chosen])


def adapted(model: DigitNet, new: Split, replay: Split, cfg: AdaptParams, augment: AugmentParams, *,
            device: torch.device, seed: int, precision: torch.dtype | None = None, sparse: bool = False,
            regularised: Callable[[Objective], Objective] | None = None) -> tuple[DigitNet, list[dict[str, float]]]:
    """A copy of `model` fine-tuned on the new labels plus the replay buffer (training steps autocast to
    `precision`, see groundwork.training.precision), its zero weights kept at zero when `sparse` (a pruned
    champion gives a pruned challenger), its objective wrapped by `regularised` where given (a penalty such as
    groundwork.adaptive.ewc's); the original is left untouched."""
    challenger = copy.deepcopy(model)
    if sparse:
        keep_zeros(challenger)
    images = torch.from_numpy(np.concatenate([new.images, replay.images]))
    labels = torch.from_numpy(np.concatenate([new.labels, replay.labels]))
    objective = supervised(online_augmentation(augment) if cfg.finetune.augmentation == "online" else None,
                           cfg.finetune.loss)
    if regularised is not None:
        objective = regularised(objective)
    # the global RNG (dropout) seeded too, as compress's fine-tunes do: the same challenger whatever ran before
    # in the process (a benchmark's earlier fine-tunes, a warm stage server)
    seed_everything(derived_seed(seed, "adapt"))
    history = fit(challenger, (images, labels), cfg.finetune, device=device, seed=derived_seed(seed, "adapt"),
                  objective=objective, desc="adapt", precision=precision)
    make_permanent(challenger)
    return challenger.eval(), history
