"""Inference speed of every model variant against the fastest fp32 runtime, side by side in one run.

The fp32 model runs two ways, channels_last PyTorch and ONNX Runtime; the faster of the two at each measure is
the baseline every variant is compared with (a speedup over a slow baseline is not one). Needs the models of a
pipeline run (`make run`). Usage: PYTHONPATH=. .venv/bin/python bench/inference.py [--runs N] [--batch B]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from groundwork.compression.names import FP32_RUNTIMES
from groundwork.data.datasets import load_dataset
from groundwork.evaluation.timing import TIMING_THREADS, wall_times_ms
from groundwork.evaluation.variants import load_variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per variant and batch size")
    parser.add_argument("--batch", type=int, default=256, help="batch size of the throughput measure")
    parser.add_argument("--models", type=Path, default=Path("models"), help="folder of a pipeline run's models")
    args = parser.parse_args()
    torch.set_num_threads(TIMING_THREADS)
    target, _ = load_dataset(Path("data/processed/target.npz"), splits=("test",))
    images = target["test"].tensors()[0]
    batch = images[torch.arange(args.batch) % len(images)]
    results: dict[str, tuple[float, float]] = {}
    runners = load_variants(args.models / "transfer.pt", args.models / "compressed")
    for _round in range(2):  # two interleaved rounds, keeping each variant's best median: less noise
        for name, variant in runners.items():
            single = statistics.median(wall_times_ms(variant.predict, images[:1], warmup=10, runs=args.runs))
            batched = statistics.median(wall_times_ms(variant.predict, batch, warmup=2, runs=args.runs))
            previous = results.get(name, (float("inf"), float("inf")))
            results[name] = (min(previous[0], single), min(previous[1], batched))
    best_single = min(results[name][0] for name in FP32_RUNTIMES)
    best_batched = min(results[name][1] for name in FP32_RUNTIMES)
    print(f"{TIMING_THREADS} threads; batch-1 latency and batch-{args.batch} throughput, median of {args.runs} runs")
    print(f"{'variant':16s} {'p50 ms @1':>10s} {'x fastest fp32':>15s} {'images/s @' + str(args.batch):>16s} "
          f"{'x fastest fp32':>15s}")
    for name, (single, batched) in results.items():
        print(f"{name:16s} {single:10.3f} {best_single / single:15.2f} {args.batch / (batched / 1000):16.0f} "
              f"{best_batched / batched:15.2f}")


if __name__ == "__main__":
    main()
