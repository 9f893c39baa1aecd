"""Wall-clock timing of a model variant: latency of one image and throughput at a large batch."""

from __future__ import annotations

import statistics
import time

import torch

from groundwork.evaluation.variants import Predict
from groundwork.params import EvaluateParams

TIMING_THREADS = 2  # every variant timed with the same thread budget, the cores of the reference machine


def wall_times_ms(predict: Predict, batch: torch.Tensor, *, warmup: int, runs: int) -> list[float]:
    """Milliseconds of `runs` predictions of one batch, after `warmup` untimed ones."""
    for _ in range(warmup):
        predict(batch)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        predict(batch)
        times.append((time.perf_counter() - started) * 1000)
    return times


def speed(predict: Predict, images: torch.Tensor, cfg: EvaluateParams) -> dict[str, float]:
    """Latency of one image (p50, p95) and throughput at a large batch (images/s from the median run)."""
    single = wall_times_ms(predict, images[:1], warmup=cfg.warmup_runs, runs=cfg.latency_runs)
    batch = images[torch.arange(cfg.throughput_batch) % len(images)]  # repeats when the split is smaller
    batched = wall_times_ms(predict, batch, warmup=2, runs=cfg.throughput_runs)
    return {"latency_p50_ms": statistics.median(single), "latency_p95_ms": statistics.quantiles(single, n=20)[18],
            f"throughput_b{cfg.throughput_batch}": cfg.throughput_batch / (statistics.median(batched) / 1000)}
