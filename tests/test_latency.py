"""latency: the per-layer latency table (every cell of the width grid in both precisions, every int8 -> int8 edge,
the runtime's floor), the estimate it gives a network, the fingerprint it is filed under, and DVC rebuilding it
when the fingerprint changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from groundwork.errors import DataError
from groundwork.params import Params
from groundwork.search.latency import (
    COLUMNS,
    LatencyTable,
    covering_widths,
    machine_fingerprint,
    read_latency_table,
    width_pairs,
)
from tasks import latency


def test_covering_networks_hold_every_width_pair_of_the_grid() -> None:
    grid = ((8, 16, 24, 32), (8, 16, 24, 32), (8, 16, 32, 64), (16, 64, 128))
    networks = covering_widths(grid, classes=10)
    pairs = width_pairs(grid, classes=10)
    for cell, wanted in enumerate(pairs):
        made = {(([1, *widths])[cell], ([*widths, 10])[cell]) for widths in networks}
        assert made == set(wanted), cell
    assert len(networks) <= 2 * max(len(cell) for cell in pairs), "about one network per pair of the widest cell"


def test_the_table_times_every_cell_edge_and_floor(tiny_params: Params, tiny_latency: dict[str, Any]) -> None:
    table = pd.read_csv(tiny_latency["table"])
    assert list(table.columns) == COLUMNS and (table["ms"] > 0).all()
    grid = tiny_params.model.width_grid(tiny_params.search.min_keep, tiny_params.search.width_multiple)
    batches = {1, tiny_params.evaluate.throughput_batch}
    layers = table[table["kind"] == "layer"]
    for cell, pairs in enumerate(width_pairs(grid, classes=10)):
        timed = layers[layers["layer"] == cell]
        assert set(zip(timed["in_width"], timed["out_width"], timed["precision"], timed["batch"], strict=True)) == {
            (a, b, precision, batch) for a, b in pairs for precision in ("fp32", "int8") for batch in batches}
    for kind in ("edge", "io"):
        rows = table[table["kind"] == kind]
        assert {(layer, width, batch) for layer, widths in enumerate(grid) for width in widths
                for batch in batches} == set(zip(rows["layer"], rows["out_width"], rows["batch"], strict=True))
    for kind in ("floor", "reference"):
        assert set(table[table["kind"] == kind]["batch"]) == batches
    metrics = tiny_latency["metrics"]
    assert metrics["cells"] == len(layers) // len(batches) and metrics["batches"] == [1, 32]
    assert metrics["structured_int8_ms_b32"] == pytest.approx(
        read_latency_table(tiny_latency["table"]).reference(32), abs=1e-4)


def test_an_estimate_sums_the_cells_less_their_hand_backs_and_the_fused_edges() -> None:
    rows = [("floor", -1, 0, 0, "fp32", 1, 0.01), ("io", 0, 8, 8, "fp32", 1, 0.03)]
    rows += [("layer", 0, 1, 8, precision, 1, ms) for precision, ms in (("fp32", 0.11), ("int8", 0.21))]
    rows += [("layer", 1, 8, 10, precision, 1, ms) for precision, ms in (("fp32", 0.31), ("int8", 0.41))]
    rows += [("edge", 0, 8, 8, "int8", 1, 0.05)]
    table = LatencyTable(pd.DataFrame(rows, columns=COLUMNS))
    # the first cell hands back its 8-channel map (0.03), the head its logits (the floor, paid once by the network)
    assert table.network_ms([8], ["fp32", "fp32"], 1) == pytest.approx(0.01 + 0.08 + 0.30)
    assert table.network_ms([8], ["fp32", "int8"], 1) == pytest.approx(0.01 + 0.08 + 0.40), "no fused edge"
    assert table.network_ms([8], ["int8", "int8"], 1) == pytest.approx(0.01 + 0.18 + 0.40 - 0.02)
    with pytest.raises(DataError, match=r"latency table: no fp32 (io|layer) for cell 0 at widths (1|16) -> 16, "
                                        r"batch 1"):
        table.network_ms([16], ["fp32", "fp32"], 1)


def test_a_table_that_is_missing_or_not_a_table_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "latency.csv"
    with pytest.raises(DataError, match=rf"{path}: no latency table"):
        read_latency_table(path)
    path.write_text("kind,layer\nlayer,0\n")
    with pytest.raises(DataError, match=rf"{path}: not a latency table"):
        read_latency_table(path)
    pd.DataFrame([("floor", -1, 0, 0, "fp32", 1, float("nan"))], columns=COLUMNS).to_csv(path, index=False)
    with pytest.raises(DataError, match=rf"{path}: not a latency table"):
        read_latency_table(path)


def test_a_fingerprint_of_another_machine_is_never_measured_under(tmp_path: Path, tiny_params: Params) -> None:
    machine = tmp_path / "machine.json"
    machine.write_text(json.dumps({**machine_fingerprint(2), "cpu": "another CPU"}))
    table = tmp_path / "latency.csv"
    with pytest.raises(DataError, match=rf"{machine}: the fingerprint of another machine or runtime"):
        latency.run(tiny_params, machine=machine, table_out=table)
    assert not table.exists()
    with pytest.raises(DataError, match=rf"{tmp_path / 'none.json'}: no machine fingerprint"):
        latency.run(tiny_params, machine=tmp_path / "none.json", table_out=table)
