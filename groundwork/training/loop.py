"""The one training loop and evaluation used by pretrain, transfer and compress fine-tuning."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from groundwork.data.datasets import to_float
from groundwork.errors import TrainingDiverged
from groundwork.params.training import TrainParams
from groundwork.training.distributed import (
    broadcast_from_main,
    is_main_process,
    parallel,
    rank,
    sum_over_ranks,
    world_size,
)
from groundwork.training.precision import autocast
from groundwork.training.resume import load_resume, save_resume

log = logging.getLogger(__name__)
# A model trained on its own logs a line per epoch at INFO; where many models train alike (the budget sweep's draws),
# those lines are detail (DEBUG) and the caller logs one summary line per job: thousands of epoch lines otherwise
EPOCH_LOG_LEVEL: ContextVar[int] = ContextVar("epoch_log_level", default=logging.INFO)


@contextmanager
def epochs_logged_at(level: int) -> Iterator[None]:
    """The epoch lines of training done inside, at `level`."""
    token = EPOCH_LOG_LEVEL.set(level)
    try:
        yield
    finally:
        EPOCH_LOG_LEVEL.reset(token)

EPOCH_LINES = 10  # about this many epoch lines per model at EPOCH_LOG_LEVEL, evenly spaced; the rest at DEBUG


def epoch_line_level(epoch: int, epochs: int) -> int:
    """The level of epoch `epoch`'s line (1-based, of `epochs`): EPOCH_LOG_LEVEL for the first (training has
    started), every (epochs / 10)-th and the last, DEBUG for the others. A 60-epoch transfer wrote 120 lines into
    every run's log otherwise; the MLflow run and the history CSV keep every epoch."""
    stride = -(-epochs // EPOCH_LINES)
    return EPOCH_LOG_LEVEL.get() if epoch in (1, epochs) or epoch % stride == 0 else logging.DEBUG


EpochCallback = Callable[[int, dict[str, float]], None]
BatchAugment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# (model, float inputs, labels, generator) -> (loss to minimise, correct predictions in the batch)
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, int]]
Validate = Callable[[nn.Module], dict[str, float]]
EVAL_BATCH = 512
# A batch loss this many times the first batch's loss means the run has blown up even if still finite
# (an untrained 10-class model starts near ln 10 = 2.3; a healthy run only goes down from there). A fine-tune of
# a trained model may start far lower (0.01 on images it knows) and meet a hard batch at 1.5: the first loss is
# counted as at least an untrained model's, so only a real blow-up stops the run.
DIVERGENCE_FACTOR = 100.0
UNTRAINED_LOSS = math.log(10)




def derived_seed(seed: int, *names: object) -> int:
    """A seed for one named part of a run (`derived_seed(seed, "pruned", 3)`), stable across runs and
    processes and independent of the other parts: changing one part's name or count changes no other seed."""
    digest = hashlib.sha256("/".join(map(str, (seed, *names))).encode()).digest()
    return int.from_bytes(digest[:4], "little") % 2**31


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


class LRPolicy:
    """Warm-up, then the named schedule: per-step schedulers advance after every batch, the plateau
    schedule after every epoch with the validation loss."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainParams, steps_per_epoch: int) -> None:
        warmup_steps = cfg.warmup_epochs * steps_per_epoch
        main_steps = cfg.epochs * steps_per_epoch - warmup_steps
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._warmup_steps, self._taken = warmup_steps, 0
        schedulers: list[torch.optim.lr_scheduler.LRScheduler] = []
        if warmup_steps:
            schedulers.append(torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.05, total_iters=warmup_steps))
        if cfg.schedule == "cosine":
            schedulers.append(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=main_steps))
        elif cfg.schedule == "step":
            schedulers.append(torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size * steps_per_epoch,
                                                              gamma=cfg.gamma))
        elif cfg.schedule == "onecycle":
            max_lrs = [group["lr"] for group in optimizer.param_groups]
            schedulers.append(torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=main_steps))
        elif cfg.schedule == "plateau":
            self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=cfg.gamma,
                                                                       patience=cfg.plateau_patience)
        if len(schedulers) > 1:
            self._stepper: torch.optim.lr_scheduler.LRScheduler | None = torch.optim.lr_scheduler.SequentialLR(
                optimizer, schedulers, milestones=[warmup_steps])
        else:
            self._stepper = schedulers[0] if schedulers else None

    def after_step(self) -> None:
        """Advance the per-step schedule (and the warm-up) by one batch."""
        self._taken += 1
        if self._stepper is not None and (self._plateau is None or self._taken <= self._warmup_steps):
            self._stepper.step()

    def state_dict(self) -> dict[str, Any]:
        """The schedulers' positions, for resuming."""
        return {"taken": self._taken,
                "stepper": self._stepper.state_dict() if self._stepper is not None else None,
                "plateau": self._plateau.state_dict() if self._plateau is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a state_dict() of the same policy."""
        self._taken = state["taken"]
        if self._stepper is not None:
            self._stepper.load_state_dict(state["stepper"])
        if self._plateau is not None:
            self._plateau.load_state_dict(state["plateau"])

    def after_epoch(self, val_loss: float | None) -> None:
        """Let the plateau schedule see the epoch's validation loss, once warm-up is over."""
        if self._plateau is not None and val_loss is not None and self._taken > self._warmup_steps:
            self._plateau.step(val_loss)


def prepare_batch(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> the model's float input on `device`, in channels_last layout."""
    # channels_last: measured here, a 3x3 conv ran ~20x faster than on NCHW on the CPU.
    return to_float(images).to(device).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def logits_of(model: nn.Module, images: torch.Tensor, *, device: torch.device) -> torch.Tensor:
    """Logits for uint8 images (N, 28, 28), computed in eval mode in batches; returned on the CPU."""
    model.eval().to(device, memory_format=torch.channels_last)
    chunks = [model(prepare_batch(images[i:i + EVAL_BATCH], device)).cpu() for i in range(0, len(images), EVAL_BATCH)]
    return torch.cat(chunks)


def loss_and_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
             device: torch.device) -> dict[str, float]:
    """Cross-entropy loss and accuracy of a model on uint8 images and their labels."""
    logits = logits_of(model, images, device=device)
    return {
        "loss": nn.functional.cross_entropy(logits, labels).item(),
        "accuracy": (logits.argmax(1) == labels).float().mean().item(),
    }


def _epoch_order(count: int, batch_size: int, generator: torch.Generator, *, rank: int = 0,
                 world: int = 1) -> list[torch.Tensor]:
    """This rank's batches of one epoch, as DistributedSampler deals them: one permutation drawn alike on every
    rank, wrapped round to a multiple of `world` so all ranks take the same number of steps, and every
    `world`-th index from position `rank` taken here. `batch_size` is per rank: the k-th batches of all ranks
    together are the k-th batch a single process would take with batch_size * world."""
    order = torch.randperm(count, generator=generator)
    if world > 1:
        order = order[torch.arange(-(-count // world) * world) % count][rank::world]
    # BatchNorm cannot train on a batch of one: drop a lone trailing sample (it is reshuffled next epoch).
    if len(order) > 1 and len(order) % batch_size == 1:
        order = order[:-1]
    return list(order.split(batch_size))


def steps_per_epoch(count: int, batch_size: int, world: int = 1) -> int:
    """Optimizer steps in one epoch over `count` images at global `batch_size` split over `world` processes:
    what equal-budget baselines are matched on."""
    return len(_epoch_order(count, batch_size // world, torch.Generator().manual_seed(0), world=world))


def _rank_generator(generator: torch.Generator) -> torch.Generator:
    """The generator an epoch's objective draws from (augmentation): the loop's own when training alone. Under
    DDP, a stream per rank, seeded from the shared generator at every epoch, so ranks augment (and drop out)
    independently, the shared generator stays in step on all ranks, and a resumed run replays the same draws."""
    if world_size() == 1:
        return generator
    augment_seed, dropout_seed = torch.randint(2**31, (2,), generator=generator).tolist()
    torch.manual_seed(dropout_seed + rank())
    return torch.Generator().manual_seed(augment_seed + rank())


def per_rank_batch(batch_size: int, desc: str) -> int:
    """The global batch size's share of this process; an error when the ranks cannot share it evenly."""
    world = world_size()
    if batch_size % world or batch_size // world < 2:
        raise ValueError(f"{desc}: batch_size {batch_size} does not split into {world} equal per-process batches "
                         "of at least 2 images (batch_size is the global batch; make it a multiple of nproc)")
    return batch_size // world


def mse_one_hot(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error between the softmax output and the one-hot label; `reduction="none"`: one per image."""
    one_hot = nn.functional.one_hot(targets, logits.shape[1]).to(logits.dtype)
    errors = (nn.functional.softmax(logits, dim=1) - one_hot).pow(2).mean(dim=1)
    return errors.mean() if reduction == "mean" else errors


ClassificationLoss = Callable[..., torch.Tensor]  # (logits, labels, reduction="mean" | "none") -> loss
LOSSES: dict[str, ClassificationLoss] = {"cross_entropy": nn.functional.cross_entropy, "mse": mse_one_hot}


def supervised(augment: BatchAugment | None = None, loss: str = "cross_entropy") -> Objective:
    """`loss` (a LOSSES name: TrainParams.loss) on the labels, with an optional on-the-fly augmentation of every
    batch."""
    criterion = LOSSES[loss]

    def objective(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, int]:
        if augment is not None:
            inputs = augment(inputs, generator)
        outputs = model(inputs)
        return criterion(outputs, targets), int((outputs.argmax(1) == targets).sum())
    return objective


def needs_validation(cfg: TrainParams) -> bool:
    """Whether training itself reads the validation loss (plateau schedule, early stopping, restore-best): where
    it does not, a caller that wants only the end result can skip the per-epoch validation."""
    return cfg.schedule == "plateau" or cfg.early_stopping > 0 or cfg.restore_best


def validation(images: torch.Tensor, labels: torch.Tensor, *, device: torch.device) -> Validate:
    """Loss and accuracy on a held-out split, as the loop's per-epoch validation."""
    def validate(model: nn.Module) -> dict[str, float]:
        scores = loss_and_accuracy(model, images, labels, device=device)
        return {"val_loss": scores["loss"], "val_accuracy": scores["accuracy"]}
    return validate


@dataclass
class _Progress:
    """Everything beyond weights and optimizer that a resumed run needs to continue exactly."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    first_loss: float | None = None
    best_loss: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0


def _fingerprint(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], cfg: TrainParams, seed: int,
                 desc: str, precision: torch.dtype | None) -> str:
    """What a resume file must match: the run's params, precision, seed, data and starting weights."""
    sha = hashlib.sha256(f"{desc}|{seed}|{precision}|{cfg.model_dump_json()}".encode())
    for tensor in (*train, *model.state_dict().values()):
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def _train_epoch(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], cfg: TrainParams, *,
                 objective: Objective, optimizer: torch.optim.Optimizer, policy: LRPolicy,
                 generator: torch.Generator, device: torch.device, precision: torch.dtype | None,
                 progress: _Progress, bar: tqdm, desc: str) -> dict[str, float]:
    images, labels = train
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    batches = _epoch_order(len(labels), per_rank_batch(cfg.batch_size, desc), generator, rank=rank(),
                           world=world_size())
    draws = _rank_generator(generator)
    for batch in batches:
        inputs, targets = prepare_batch(images[batch], device), labels[batch].to(device)
        with autocast(device, precision):  # the backward pass runs outside, as autocast asks
            loss, batch_correct = objective(model, inputs, targets, draws)
        # the step's figures over all ranks: every rank sees the same loss and stops on the same step
        step_loss, step_correct, step_seen = sum_over_ranks([loss.item() * len(batch), batch_correct, len(batch)],
                                                            device)
        value = step_loss / step_seen
        first = progress.first_loss = value if progress.first_loss is None else progress.first_loss
        if not math.isfinite(value) or value > DIVERGENCE_FACTOR * max(first, UNTRAINED_LOSS):
            raise TrainingDiverged(
                f"{desc}: loss became {value:.4g} in epoch {progress.epoch + 1} (first batch: {first:.4g}); "
                f"lower the learning rate (lr={cfg.lr}) or enable grad_clip"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        policy.after_step()
        loss_sum += step_loss
        correct += int(step_correct)
        seen += int(step_seen)
        bar.update()
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen, "lr": optimizer.param_groups[-1]["lr"]}


def _track_best(model: nn.Module, metrics: dict[str, float], cfg: TrainParams, progress: _Progress) -> None:
    if "val_loss" not in metrics:
        return
    if metrics["val_loss"] < progress.best_loss:
        progress.best_loss, progress.stale = metrics["val_loss"], 0
        if cfg.restore_best:
            progress.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        progress.stale += 1


def fit(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], cfg: TrainParams, *, device: torch.device,
        seed: int, validate: Validate | None = None, objective: Objective | None = None,
        groups: list[dict[str, Any]] | None = None, on_epoch: EpochCallback | None = None,
        resume: Path | None = None, desc: str = "train", precision: torch.dtype | None = None
        ) -> list[dict[str, float]]:
    """Train `model` in place on uint8 images; return one metrics dict per epoch.

    `objective` computes a batch's loss (default: supervised cross-entropy); `validate(model)` scores each
    epoch (its 'val_loss' drives the plateau schedule, early stopping and restore-best); `groups` overrides
    the optimizer's param groups (e.g. a lower LR for the backbone); `on_epoch(epoch, metrics)` is called
    after every epoch. With `resume`, the full training state is saved there after every epoch, a matching
    state found there at the start is continued from, and the file is removed when training ends: a killed
    run, started again, ends exactly as an uninterrupted one. Raises TrainingDiverged as soon as the loss
    blows up or stops being finite. `precision` (see groundwork.training.precision.autocast_dtype) runs the
    training steps' forward passes under autocast to that dtype; validation stays fp32.

    Under torchrun (a process group is up) every rank calls fit alike: the training steps run through
    DistributedDataParallel on each rank's share of the epoch, `cfg.batch_size` being the global batch split
    evenly across ranks; rank 0 alone validates (the others receive its scores, so schedules and stopping
    agree) and keeps the resume file. BatchNorm normalises with each rank's own share of the batch.
    """
    objective = objective or supervised(loss=cfg.loss)
    generator = torch.Generator().manual_seed(seed)
    per_rank_batch(cfg.batch_size, desc)  # fail before any work when the ranks cannot share the batch
    batches_per_epoch = steps_per_epoch(len(train[1]), cfg.batch_size, world_size())
    fingerprint = _fingerprint(model, train, cfg, seed, desc, precision) if resume is not None else ""
    model.to(device, memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(groups if groups is not None else [{"params": trainable}], cfg)
    policy = LRPolicy(optimizer, cfg, batches_per_epoch)
    progress = _Progress()
    if resume is not None and (saved := load_resume(resume, fingerprint)) is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        policy.load_state_dict(saved["policy"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        progress = _Progress(**saved["progress"])
        log.info("%s: resuming after epoch %d from %s", desc, progress.epoch, resume)
    # tqdm's own TQDM_DISABLE also turns the bar off (set in processes that train beside others, groundwork.training
    # .jobs): tqdm lets an explicit disable=None (a bar on a terminal only) take precedence over it
    quiet = not is_main_process() or bool(os.environ.get("TQDM_DISABLE"))
    bar = tqdm(total=cfg.epochs * batches_per_epoch, initial=progress.epoch * batches_per_epoch, desc=desc,
               unit="batch", disable=True if quiet else None, leave=False)
    trainer = parallel(model, device)
    try:
        while progress.epoch < cfg.epochs and not (cfg.early_stopping and progress.stale >= cfg.early_stopping):
            metrics = _train_epoch(trainer, train, cfg, objective=objective, optimizer=optimizer, policy=policy,
                                   generator=generator, device=device, precision=precision, progress=progress,
                                   bar=bar, desc=desc)
            if validate is not None:
                metrics |= broadcast_from_main(validate(model) if is_main_process() else None)
            policy.after_epoch(metrics.get("val_loss"))
            progress.epoch += 1
            bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k != "lr"})
            log.log(epoch_line_level(progress.epoch, cfg.epochs), "%s epoch %d/%d %s", desc, progress.epoch,
                    cfg.epochs, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            progress.history.append({"epoch": progress.epoch, **metrics})
            _track_best(model, metrics, cfg, progress)
            if on_epoch is not None:
                on_epoch(progress.epoch, metrics)
            if resume is not None and is_main_process():
                save_resume(resume, fingerprint, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "policy": policy.state_dict(), "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(), "progress": asdict(progress)})
    finally:
        bar.close()
    if cfg.early_stopping and progress.stale >= cfg.early_stopping:
        log.log(EPOCH_LOG_LEVEL.get(), "%s: stopped early after epoch %d, no val-loss gain in %d epochs", desc,
                progress.epoch,
                 progress.stale)
    if progress.best_state is not None:
        model.load_state_dict(progress.best_state)
        log.log(EPOCH_LOG_LEVEL.get(), "%s: restored the weights of the epoch with val_loss %.4g", desc,
                progress.best_loss)
    if resume is not None and is_main_process():
        resume.unlink(missing_ok=True)
    return progress.history
