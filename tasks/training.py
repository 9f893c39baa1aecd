"""The one training loop and evaluation used by pretrain, transfer and compress fine-tuning."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tasks.data import to_float
from tasks.params import TrainParams

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
BatchAugment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
EVAL_BATCH = 512
# A batch loss this many times the first batch's loss means the run has blown up even if still finite
# (an untrained 10-class model starts near ln 10 = 2.3; a healthy run only goes down from there).
DIVERGENCE_FACTOR = 100.0


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing trained in this run should be saved."""


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; 'cuda' without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so the same seed gives the same run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(groups: Iterable[dict[str, Any]], cfg: TrainParams) -> torch.optim.Optimizer:
    """The optimizer named in params; `groups` are torch param groups (each may carry its own 'lr')."""
    groups = list(groups)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "momentum":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainParams,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step LR schedule, so every schedule advances at the same granularity."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size * steps_per_epoch,
                                               gamma=cfg.gamma)
    if cfg.schedule == "onecycle":
        max_lrs = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total)
    return None


def _prepare(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    # channels_last: measured here, a 3x3 conv ran ~20x faster than on NCHW on the CPU.
    return to_float(images).to(device).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def logits_of(model: nn.Module, images: torch.Tensor, *, device: torch.device) -> torch.Tensor:
    """Logits for uint8 images (N, 28, 28), computed in eval mode in batches; returned on the CPU."""
    model.eval().to(device, memory_format=torch.channels_last)
    chunks = [model(_prepare(images[i:i + EVAL_BATCH], device)).cpu() for i in range(0, len(images), EVAL_BATCH)]
    return torch.cat(chunks)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
             device: torch.device) -> dict[str, float]:
    """Cross-entropy loss and accuracy of a model on uint8 images and their labels."""
    logits = logits_of(model, images, device=device)
    return {
        "loss": nn.functional.cross_entropy(logits, labels).item(),
        "accuracy": (logits.argmax(1) == labels).float().mean().item(),
    }


def _epoch_order(count: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(count, generator=generator)
    # BatchNorm cannot train on a batch of one: drop a lone trailing sample (it is reshuffled next epoch).
    if count > 1 and count % batch_size == 1:
        order = order[:-1]
    return list(order.split(batch_size))


def fit(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor] | None, cfg: TrainParams, *, device: torch.device, seed: int,
        groups: list[dict[str, Any]] | None = None, augment: BatchAugment | None = None,
        on_epoch: EpochCallback | None = None, desc: str = "train") -> list[dict[str, float]]:
    """Train `model` in place on uint8 images; return one metrics dict per epoch.

    `groups` overrides the optimizer's param groups (e.g. a lower LR for the backbone); `augment` is applied
    to each float batch on the fly; `on_epoch(epoch, metrics)` is called after every epoch.
    Raises TrainingDiverged as soon as the loss stops being finite.
    """
    images, labels = train
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(_epoch_order(len(labels), cfg.batch_size, torch.Generator().manual_seed(0)))
    model.to(device, memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(groups if groups is not None else [{"params": trainable}], cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    history: list[dict[str, float]] = []
    first_loss: float | None = None
    progress = tqdm(total=cfg.epochs * steps_per_epoch, desc=desc, unit="batch", disable=None, leave=False)
    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for batch in _epoch_order(len(labels), cfg.batch_size, generator):
                inputs, targets = _prepare(images[batch], device), labels[batch].to(device)
                if augment is not None:
                    inputs = augment(inputs, generator)
                outputs = model(inputs)
                loss = nn.functional.cross_entropy(outputs, targets)
                first_loss = loss.item() if first_loss is None else first_loss
                if not math.isfinite(loss.item()) or loss.item() > DIVERGENCE_FACTOR * first_loss:
                    raise TrainingDiverged(
                        f"{desc}: loss became {loss.item():.4g} in epoch {epoch} (first batch: {first_loss:.4g}); "
                        f"lower the learning rate (lr={cfg.lr}) or enable grad_clip"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                loss_sum += loss.item() * len(batch)
                correct += (outputs.argmax(1) == targets).sum().item()
                seen += len(batch)
                progress.update()
            metrics = {"train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                       "lr": optimizer.param_groups[-1]["lr"]}
            if val is not None:
                scores = evaluate(model, *val, device=device)
                metrics |= {"val_loss": scores["loss"], "val_accuracy": scores["accuracy"]}
            progress.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k != "lr"})
            log.info("%s epoch %d/%d %s", desc, epoch, cfg.epochs,
                     " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            history.append({"epoch": epoch, **metrics})
            if on_epoch is not None:
                on_epoch(epoch, metrics)
    finally:
        progress.close()
    return history
