"""Wall-clock timing of model variants, interleaved: every round times every variant once (latency of one image,
throughput at a large batch), in an order rotated from round to round, so a slow spell of a shared host falls on
all of them alike and each variant's speed is read as a ratio to a reference timed in the same rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from groundwork.evaluation.statistics import Ratio, ratio
from groundwork.evaluation.variants import Predict
from groundwork.params.compression import EvaluateParams


def wall_times_ms(predict: Predict, batch: torch.Tensor, *, runs: int) -> list[float]:
    """Milliseconds of each of `runs` predictions of one batch."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        predict(batch)
        times.append((time.perf_counter() - started) * 1000)
    return times


@dataclass(frozen=True)
class Timings:
    """Per variant, per round: the median latency of one image (ms) and the throughput at the large batch
    (images/s, from the round's fastest batch), with the batch size."""

    latency_ms: dict[str, np.ndarray]
    throughput: dict[str, np.ndarray]
    batch: int

    def ratio(self, objective: str, name: str, reference: str) -> Ratio:
        """How many times better `name` is than `reference` on a timed objective (throughput: images/s over
        images/s; latency: the reference's milliseconds over the variant's), from the shared rounds."""
        if objective == "throughput":
            return ratio(self.throughput[name], self.throughput[reference])
        return ratio(self.latency_ms[reference], self.latency_ms[name])

    def summary(self, name: str) -> dict[str, float]:
        """The variant's headline figures over all rounds: latency p50 and p95, median throughput."""
        latency = self.latency_ms[name]
        return {"latency_p50_ms": float(np.median(latency)), "latency_p95_ms": float(np.percentile(latency, 95)),
                f"throughput_b{self.batch}": float(np.median(self.throughput[name]))}


def interleaved_timings(predictors: Mapping[str, Predict], images: torch.Tensor, cfg: EvaluateParams) -> Timings:
    """Time every predictor in `cfg.timing_rounds` rounds, each predictor once a round, the order rotated each
    round; untimed warm-up runs of each first."""
    names = list(predictors)
    single = images[:1]
    batch = images[torch.arange(cfg.throughput_batch) % len(images)]  # repeats when the split is smaller
    for name in names:
        wall_times_ms(predictors[name], single, runs=cfg.warmup_runs)
        wall_times_ms(predictors[name], batch, runs=1)
    latency: dict[str, list[float]] = {name: [] for name in names}
    throughput: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(cfg.timing_rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            latency[name].append(statistics.median(wall_times_ms(predictors[name], single, runs=cfg.latency_runs)))
            fastest = min(wall_times_ms(predictors[name], batch, runs=cfg.throughput_runs))
            throughput[name].append(cfg.throughput_batch / (fastest / 1000))
    return Timings({name: np.array(values) for name, values in latency.items()},
                   {name: np.array(values) for name, values in throughput.items()}, cfg.throughput_batch)
