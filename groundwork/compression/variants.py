"""The variants compress trains (pruned with its packed copy, structured, searched, low-rank), each an independent
job for groundwork.training.jobs. Every fine-tune takes its seed from the variant and round (`fine_tuner`), so a
variant comes out the same whichever process trains it and whatever ran before it there."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from groundwork.compression.finetuning import (
    channel_pruned,
    fine_tuner,
    low_rank,
    magnitude_pruned,
    shared_and_tuned,
)
from groundwork.compression.structured import narrower
from groundwork.data.datasets import load_dataset
from groundwork.models.checkpoint import load_model
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params
from groundwork.params.training import ModelParams
from groundwork.tracking.runs import NullTracker
from groundwork.training.distributed import resolve_device

# longest first: with two workers, pruned (its rounds and packed's fine-tune) runs beside structured then searched
TRAINED = ("pruned", "structured", "searched", "lowrank")


@dataclass(frozen=True)
class VariantJob:
    """One trained variant and what making it needs (plain data: it may be sent to a worker process)."""

    name: str  # one of TRAINED
    transferred: Path
    target: Path
    params: Params
    searched: ModelParams  # the widths the search stage chose, for the searched variant

    def __str__(self) -> str:  # how an error of groundwork.training.jobs names it
        return f"variant {self.name}"


@dataclass(frozen=True)
class TrainedVariant:
    """A job's models (pruned's job also makes packed) on the CPU, and its fine-tunes' metrics, for the stage's
    tracker to log: a worker process has no run of its own."""

    models: dict[str, DigitNet]
    logged: list[tuple[dict[str, float], int | None]]


@dataclass
class MetricsRecorder(NullTracker):
    """A tracker that keeps the metrics logged to it, in order, and nothing else."""

    logged: list[tuple[dict[str, float], int | None]] = field(default_factory=list)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.logged.append((dict(metrics), step))


def variant_jobs(params: Params, *, transferred: Path, target: Path, searched: ModelParams) -> list[VariantJob]:
    """The stage's trained variants, in the order they are best handed to workers."""
    return [VariantJob(name, transferred, target, params, searched) for name in TRAINED]


def train_variant(job: VariantJob) -> TrainedVariant:
    """Compress the transferred model into the job's variant, fine-tuning as params say."""
    params = job.params
    data, _ = load_dataset(job.target, splits=("train", "val", "pool"))
    recorder = MetricsRecorder()
    tune = fine_tuner(params, data, load_model(job.transferred)[0], resolve_device(params.device), recorder)
    model = load_model(job.transferred)[0]
    if job.name == "pruned":
        pruned = magnitude_pruned(model, params, tune)
        models = {"pruned": pruned, "packed": shared_and_tuned(pruned, params, tune)}
    elif job.name == "structured":
        models = {"structured": channel_pruned(model, narrower(params.model, params.compress.channels_kept),
                                               params, tune, "structured")}
    elif job.name == "searched":
        models = {"searched": channel_pruned(model, job.searched, params, tune, "searched")}
    elif job.name == "lowrank":
        models = {"lowrank": low_rank(model, params, tune)}
    else:
        raise ValueError(f"no trained variant '{job.name}' (known: {', '.join(TRAINED)})")
    return TrainedVariant({name: trained.cpu() for name, trained in models.items()}, recorder.logged)
