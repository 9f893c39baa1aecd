"""How well the latency table (groundwork/search/latency.py, the latency stage) predicts what a whole network
costs in ONNX Runtime on this machine: end-to-end timings of random networks of the search's width grid, each
layer in int8 or fp32 at random (the first and last in fp32 when `compress.quantization.keep_ends_fp32`), whose
measured latency at the throughput batch lies within 25% of the search's 0.5x budget (half of `structured_int8`'s
measured latency, or the smallest network's estimate where that is more), against the table's estimates:
Spearman's rank correlation, the median and the largest relative error. The same networks at batch 1 are
reported beside them.

Usage: PYTHONPATH=. .venv/bin/python bench/latency_table.py [--networks 30] [--table reports/latency.csv]
Without --table (or when the file was measured on another machine) the table is built first (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from groundwork.compression.export import export_onnx, quantize_int8
from groundwork.evaluation.timing import TIMING_THREADS
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params, load_params
from groundwork.search.latency import (
    LatencyTable,
    build_table,
    machine_fingerprint,
    read_latency_table,
    time_ms,
)

WINDOW = 0.25  # networks kept: measured latency within this share of the budget
BUDGET_SHARE = 0.5  # of structured_int8's measured latency
RUNS = 41  # timed calls per end-to-end measurement (median)
IMAGE = (1, 28, 28)


def shipped_file(params: Params, widths: tuple[int, ...], precisions: list[str], folder: Path) -> Path:
    """The network at `widths` exported and quantized as compress does it (calibrated on random images: the
    scales do not change the time), each weighted layer (then the head) in its precision of `precisions`."""
    exported, shipped = folder / "network.onnx", folder / "shipped.onnx"
    export_onnx(DigitNet(params.model.with_widths(widths)), exported)
    if "int8" not in precisions:
        return exported
    images = np.random.default_rng(0).random((16, *IMAGE), dtype=np.float32)
    quantize_int8(exported, shipped, images, params.compress.quantization,
                  fp32_layers=[layer for layer, precision in enumerate(precisions) if precision == "fp32"])
    return shipped


def end_to_end(params: Params, widths: tuple[int, ...], precisions: list[str], batches: tuple[int, ...],
               folder: Path) -> dict[int, float]:
    """Milliseconds per call of the shipped network at each batch."""
    path = shipped_file(params, widths, precisions, folder)
    return {batch: time_ms(path, IMAGE, batch, runs=RUNS, threads=TIMING_THREADS) for batch in batches}


def ends_precisions(params: Params, cells: int, rng: np.random.Generator | None) -> list[str]:
    """int8 everywhere (or at random per layer, with `rng`), the ends fp32 when the params keep them so."""
    ends = (0, cells - 1) if params.compress.quantization.keep_ends_fp32 else ()
    return ["fp32" if cell in ends else ("int8" if rng is None or rng.random() < 0.5 else "fp32")
            for cell in range(cells)]


def load_or_build(params: Params, table_path: Path | None, batches: tuple[int, ...]) -> LatencyTable:
    machine = table_path.parent / "machine.json" if table_path else None
    if table_path and table_path.exists() and machine and machine.exists() and \
            json.loads(machine.read_text()) == machine_fingerprint(TIMING_THREADS):
        print(f"table: {table_path} (measured on this machine)")
        return read_latency_table(table_path)
    print("table: building it (the given one is missing or from another machine)")
    started = time.perf_counter()
    grid = params.model.width_grid(params.search.min_keep, params.search.width_multiple)
    table = build_table(params.model, grid, batches=batches, runs=params.search.latency_runs,
                        threads=TIMING_THREADS, quantization=params.compress.quantization)
    print(f"built in {time.perf_counter() - started:.0f} s")
    return LatencyTable(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", type=int, default=30, help="networks within the window to time")
    parser.add_argument("--table", type=Path, default=Path("reports/latency.csv"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    params = load_params(Path("params.yaml"))
    big = params.evaluate.throughput_batch
    batches = (1, big)
    table = load_or_build(params, args.table, batches)
    grid = params.model.width_grid(params.search.min_keep, params.search.width_multiple)
    cells = len(grid) + 1
    rng = np.random.default_rng(args.seed)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        structured = tuple(math.ceil(width * params.compress.channels_kept) for width in params.model.layer_widths())
        reference = end_to_end(params, structured, ends_precisions(params, cells, None), batches, folder)
        asked = BUDGET_SHARE * reference[big]
        lowest = tuple(choices[0] for choices in grid)
        free = [cell for cell, precision in enumerate(ends_precisions(params, cells, None)) if precision == "int8"]
        smallest = min(table.network_ms(lowest, ["int8" if cell in chosen else "fp32" for cell in range(cells)], big)
                       for chosen in (set(np.asarray(free)[mask]) for mask in
                                      np.array(np.meshgrid(*[[False, True]] * len(free))).T.reshape(-1, len(free))))
        budget = max(asked, smallest)
        print(f"structured_int8 {structured}: {reference[big]:.3f} ms at batch {big}, {reference[1]:.4f} ms at "
              f"batch 1; {BUDGET_SHARE}x budget {asked:.3f} ms; the smallest network's estimate {smallest:.3f} ms; "
              f"budget used {budget:.3f} ms, window {(1 - WINDOW) * budget:.3f}-{(1 + WINDOW) * budget:.3f}")
        tried = 0
        while len(rows) < args.networks and tried < 100 * args.networks:
            # widths skewed toward the narrow end by a power drawn per network: the window lies near the smallest
            power = rng.uniform(1.0, 6.0)
            widths = tuple(int(choices[int(len(choices) * rng.random() ** power)]) for choices in grid)
            precisions = ends_precisions(params, cells, rng)
            estimate = {batch: table.network_ms(widths, precisions, batch) for batch in batches}
            tried += 1
            if abs(estimate[big] / budget - 1) > WINDOW + 0.15:  # far outside: not worth timing
                continue
            measured = end_to_end(params, widths, precisions, batches, folder)
            if abs(measured[big] / budget - 1) <= WINDOW:
                rows.append({"widths": widths, "precisions": "".join(p[0] for p in precisions),
                             **{f"measured_b{b}": measured[b] for b in batches},
                             **{f"estimate_b{b}": estimate[b] for b in batches}})
                print(f"{len(rows):3d} {widths} {rows[-1]['precisions']} measured {measured[big]:.3f} ms, "
                      f"estimate {estimate[big]:.3f} ms")
    frame = pd.DataFrame(rows)
    print(f"\n{len(frame)} networks within {WINDOW:.0%} of the {BUDGET_SHARE}x budget ({tried} drawn)\n")
    print("| batch | Spearman | median error | largest error |")
    print("| --- | --- | --- | --- |")
    for batch in batches:
        error = (frame[f"estimate_b{batch}"] / frame[f"measured_b{batch}"] - 1).abs()
        rho = spearmanr(frame[f"estimate_b{batch}"], frame[f"measured_b{batch}"]).statistic
        print(f"| {batch} | {rho:.3f} | {error.median():.1%} | {error.max():.1%} |")


if __name__ == "__main__":
    main()
