"""latency: a lookup table of what each prunable layer costs in ONNX Runtime on this machine, at every width
pair the search can choose (`search.min_keep`, `search.width_multiple`), in fp32 and in int8, at batch 1 and at
evaluate's throughput batch, on the threads the variants are timed with (groundwork.search.latency), and
`structured_int8` timed end to end (the search's latency budget is a share of it). DVC
rebuilds it when the machine's fingerprint (the machine stage) changes, and never uses one measured elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from groundwork.compression.export import TIMING_THREADS
from groundwork.compression.structured import narrower
from groundwork.data.atomic import atomic_path
from groundwork.entrypoint import stage_cli
from groundwork.params import Params
from groundwork.search.latency import build_table, check_machine
from groundwork.tracking.runs import NullTracker, RunLog

log = logging.getLogger(__name__)


def run(params: Params, *, machine: Path, table_out: Path, tracker: RunLog | None = None) -> dict[str, Any]:
    """Time every cell and write the table (CSV); return its size, the runtime's floor and how long it took."""
    tracker = tracker or NullTracker()
    fingerprint = check_machine(machine, TIMING_THREADS)
    grid = params.model.width_grid(params.search.min_keep, params.search.width_multiple)
    batches = (1, params.evaluate.throughput_batch)
    started = time.perf_counter()
    with tqdm(desc="latency table", unit="cell", mininterval=2.0, disable=None) as bar:
        def on_cell(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        table = build_table(params.model, grid, batches=batches, runs=params.search.latency_runs,
                            threads=TIMING_THREADS, quantization=params.compress.quantization,
                            reference=narrower(params.model, params.compress.channels_kept).layer_widths(),
                            on_cell=on_cell)
    seconds = time.perf_counter() - started
    with atomic_path(table_out) as tmp:
        table.to_csv(tmp, index=False)
    tracker.log_artifact(table_out, "latency")
    floors = table[table["kind"] == "floor"].set_index("batch")["ms"]
    cells, edges = (int((table["kind"] == kind).sum()) // len(batches) for kind in ("layer", "edge"))
    log.info("latency table: %d cells (each width pair, fp32 and int8) and %d edges timed on %s in %.0f s; a call "
             "costs at least %.3f ms at batch 1", cells, edges, fingerprint["cpu"], seconds, floors[1])
    references = table[table["kind"] == "reference"].set_index("batch")["ms"]
    return {"cells": cells, "edges": edges, "batches": list(batches), "seconds": round(seconds, 1),
            **{f"structured_int8_ms_b{batch}": round(float(ms), 4) for batch, ms in references.items()},
            **{f"floor_ms_b{batch}": round(float(ms), 4) for batch, ms in floors.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("latency", __doc__, run, argv, paths={
        "machine": "this machine's fingerprint (.json), written by the machine stage",
        "table_out": "the latency table (.csv) to write: one row per cell, edge and floor, per batch",
    })


if __name__ == "__main__":
    sys.exit(main())
