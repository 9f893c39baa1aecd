"""How well the latency table (groundwork/search/latency.py, the latency stage) predicts what a whole network
costs in ONNX Runtime on this machine: end-to-end timings of random networks of the search's width grid, each
layer in int8 or fp32 at random (the first and last in fp32 when `compress.quantization.keep_ends_fp32`), whose
measured latency at the throughput batch lies within 25% of the search's 0.5x budget (half of `structured_int8`'s
latency, or the fastest network's where that is more: `groundwork.search.compare.search_budget`), against the
table's estimates:
Spearman's rank correlation, the median and the largest relative error. The same networks at batch 1 are
reported beside them.

Usage: PYTHONPATH=. .venv/bin/python bench/latency_table.py [--networks 30] [--table reports/latency.csv]
Without --table (or when the file was measured on another machine) the table is built first (a few minutes).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from groundwork.compression.export import TIMING_THREADS
from groundwork.compression.structured import narrower
from groundwork.errors import DataError
from groundwork.params import Params, load_params
from groundwork.search.compare import search_budget
from groundwork.search.latency import (
    LatencyTable,
    build_table,
    check_machine,
    measure_network,
    read_latency_table,
    shipped_precisions,
)

WINDOW = 0.25  # networks kept: measured latency within this share of the budget
BUDGET_SHARE = 0.5  # of structured_int8's measured latency
RUNS = 41  # timed calls per end-to-end measurement (median)


def random_precisions(params: Params, cells: int, rng: np.random.Generator) -> list[str]:
    """Each layer int8 or fp32 at random, but the ends as compress ships them."""
    shipped = shipped_precisions(cells, params.compress.quantization)
    return [precision if cell in (0, cells - 1) else ("int8" if rng.random() < 0.5 else "fp32")
            for cell, precision in enumerate(shipped)]


def end_to_end(params: Params, widths: tuple[int, ...], precisions: list[str], batches: tuple[int, ...]) -> dict:
    return measure_network(params.model, widths, precisions, quantization=params.compress.quantization,
                           batches=batches, runs=RUNS, threads=TIMING_THREADS)


def load_or_build(params: Params, table_path: Path, batches: tuple[int, ...]) -> LatencyTable:
    try:
        check_machine(table_path.parent / "machine.json", TIMING_THREADS)
        table = read_latency_table(table_path)
        print(f"table: {table_path} (measured on this machine)")
        return table
    except DataError as exc:
        print(f"table: building it ({exc})")
    started = time.perf_counter()
    grid = params.model.width_grid(params.search.min_keep, params.search.width_multiple)
    table = build_table(params.model, grid, batches=batches, runs=params.search.latency_runs,
                        threads=TIMING_THREADS, quantization=params.compress.quantization,
                        reference=narrower(params.model, params.compress.channels_kept).layer_widths())
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
    half = search_budget(params.model_copy(update={"search": params.search.model_copy(
        update={"budget_of": "latency", "latency_kept": BUDGET_SHARE})}), table)
    budget = half.limit
    print(f"structured_int8: {table.reference(big):.3f} ms at batch {big} end to end, {half.asked / BUDGET_SHARE:.3f} "
          f"ms estimated; the search's {BUDGET_SHARE}x budget: {half.describe()}; window "
          f"{(1 - WINDOW) * budget:.3f}-{(1 + WINDOW) * budget:.3f} ms")
    rows: list[dict[str, Any]] = []
    tried = 0
    while len(rows) < args.networks and tried < 100 * args.networks:
        # widths skewed toward the narrow end by a power drawn per network: the window lies near the smallest
        power = rng.uniform(1.0, 6.0)
        widths = tuple(int(choices[int(len(choices) * rng.random() ** power)]) for choices in grid)
        precisions = random_precisions(params, cells, rng)
        estimate = {batch: table.network_ms(widths, precisions, batch) for batch in batches}
        tried += 1
        if abs(estimate[big] / budget - 1) > WINDOW + 0.15:  # far outside: not worth timing
            continue
        measured = end_to_end(params, widths, precisions, batches)
        if abs(measured[big] / budget - 1) <= WINDOW:
            rows.append({"widths": widths, "precisions": "".join(p[0] for p in precisions),
                         **{f"measured_b{b}": measured[b] for b in batches},
                         **{f"estimate_b{b}": estimate[b] for b in batches}})
            print(f"{len(rows):3d} {widths} {rows[-1]['precisions']} measured {measured[big]:.3f} ms, "
                  f"estimate {estimate[big]:.3f} ms")
    frame = pd.DataFrame(rows)
    print(f"\n{len(frame)} networks within {WINDOW:.0%} of the budget ({tried} drawn)\n")
    print("| batch | Spearman | median error | largest error |")
    print("| --- | --- | --- | --- |")
    for batch in batches:
        error = (frame[f"estimate_b{batch}"] / frame[f"measured_b{batch}"] - 1).abs()
        rho = spearmanr(frame[f"estimate_b{batch}"], frame[f"measured_b{batch}"]).statistic
        print(f"| {batch} | {rho:.3f} | {error.median():.1%} | {error.max():.1%} |")


if __name__ == "__main__":
    main()
