"""A per-layer latency lookup table for ONNX Runtime on this machine (NetAdapt's and AMC's latency tables, HAQ's
hardware table): what each prunable layer costs at every width pair the search can choose, in fp32 and in int8,
at batch 1 and at evaluate's throughput batch, on the threads the variants are timed with.

A cell is the piece of the exported network from one weighted layer's input to the next one's (its conv or dense
layer, BatchNorm folded in, activation, pooling, flattening), cut out of the exported, pre-processed graph with
`onnx.utils.Extractor`, so it runs the kernels the shipped file runs; the last cell is the head. An int8 cell is
that piece quantized alone as compress quantizes a model (QDQ, static, the same per-channel setting), so it also
pays a QuantizeLinear at its input and a DequantizeLinear at its output. A network's estimate is then

    floor + sum over cells (cell - io) - sum over int8 -> int8 edges (edge - io)

Timed alone, a cell also pays for the call and for handing its output back to Python, which inside the network
it never does: `io` is that cost, the time of a model that returns its input, on the cell's output's shape (for
the head, the logits: that is `floor`, the cost of a call that does next to nothing, which the network pays
once). An edge is a QuantizeLinear -> DequantizeLinear round trip on the tensor two int8 layers pass between them,
which the shipped file does not run (ONNX Runtime fuses the pair away and the tensor stays uint8).

The table is only valid on the machine and runtime that measured it: `machine_fingerprint` is what the DVC stage
that builds it depends on, so another CPU, thread count or ONNX Runtime version makes DVC rebuild it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from groundwork.compression.export import WEIGHTED_OPS, onnx_session
from groundwork.data.canvas import IMAGE_SIDE
from groundwork.errors import DataError
from groundwork.params.compression import QuantizationParams
from groundwork.params.training import ModelParams

PRECISIONS = ("fp32", "int8")
COLUMNS = ["kind", "layer", "in_width", "out_width", "precision", "batch", "ms"]
IMAGE = (1, IMAGE_SIDE, IMAGE_SIDE)  # what every network reads: one grey image
# the SIMD extensions that change which kernels ONNX Runtime picks; the fingerprint lists those present
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
              "amx_int8", "amx_bf16", "neon", "asimd")

OnCell = Callable[[int, int], None]  # (cells timed so far, cells in all)


def machine_fingerprint(threads: int) -> dict[str, Any]:
    """What a latency table depends on besides the params: the CPU (model and every feature flag, hashed), the
    threads timed on, and the ONNX Runtime release."""
    import onnxruntime

    model, flags = _cpu()
    return {"cpu": model, "simd": [flag for flag in SIMD_FLAGS if flag in flags],
            "flags_sha256": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest(),
            "machine": platform.machine(), "logical_cpus": os.cpu_count(), "threads": threads,
            "onnxruntime": onnxruntime.__version__}


def check_machine(path: Path, threads: int) -> dict[str, Any]:
    """The fingerprint the machine stage wrote at `path`, which must be this machine's on `threads`: a table is
    never measured, nor read, under a fingerprint other than the one it is filed under."""
    try:
        recorded = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no machine fingerprint (run the machine stage)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a machine fingerprint ({type(exc).__name__}: {exc})") from None
    here = machine_fingerprint(threads)
    if recorded != here:
        raise DataError(f"{path}: the fingerprint of another machine or runtime ({recorded}), not this one's "
                        f"({here}): run the machine stage here first")
    return here


def _cpu() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags: the first processor's block of /proc/cpuinfo (Linux), else what
    the platform module knows."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        block = ""
    first = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in block.splitlines())}
    model = first.get("model name") or platform.processor() or platform.machine()
    return model, set((first.get("flags") or first.get("Features") or "").split())


def width_pairs(grid: Sequence[Sequence[int]], classes: int) -> list[list[tuple[int, int]]]:
    """For every cell (each prunable layer, then the head), the (input width, output width) pairs the search can
    make: the first layer reads the image's one channel, the head writes one logit per class."""
    inputs = [[1], *grid]
    outputs = [*grid, [classes]]
    return [[(a, b) for a in ins for b in outs] for ins, outs in zip(inputs, outputs, strict=True)]


def covering_widths(grid: Sequence[Sequence[int]], classes: int) -> list[tuple[int, ...]]:
    """Width vectors whose networks, cut into cells, hold every pair of `width_pairs` at least once: each network
    is built layer by layer, taking for each layer a pair not yet covered that starts at the width the layer
    before it took (or, when none is left, the output width with most pairs left to cover after it)."""
    pairs = width_pairs(grid, classes)
    left = [set(cell) for cell in pairs]
    networks: list[tuple[int, ...]] = []
    while any(left):
        widths, previous = [], 1
        for layer, choices in enumerate(grid):
            open_here = sorted(b for a, b in left[layer] if a == previous)
            if open_here:
                width = open_here[0]
            else:
                width = max(choices, key=lambda b, after=left[layer + 1]: sum(a == b for a, _ in after))
            left[layer].discard((previous, width))
            widths.append(width)
            previous = width
        left[-1].discard((previous, classes))
        networks.append(tuple(widths))
    return networks


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice on the root logger for every cell; the table's stage has its own."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _cells(arch: ModelParams, widths: Sequence[int], scratch: Path) -> list[Any]:
    """The network at `widths` exported, pre-processed for quantization (BatchNorm folded), and cut into one
    ONNX model per weighted layer: from its input to the next weighted layer's input (the last to the logits)."""
    import onnx
    from onnx.utils import Extractor
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from groundwork.compression.export import export_onnx
    from groundwork.models.digitnet import DigitNet

    exported, prepared = scratch / "network.onnx", scratch / "prepared.onnx"
    export_onnx(DigitNet(arch.with_widths(tuple(widths))), exported)
    with _quiet_quantizer():
        quant_pre_process(str(exported), str(prepared))
    model = onnx.load(str(prepared))
    weighted = [node for node in model.graph.node if node.op_type in WEIGHTED_OPS]
    bounds = [model.graph.input[0].name, *(node.input[0] for node in weighted[1:]), model.graph.output[0].name]
    extractor = Extractor(model)
    cells = []
    for start, end in itertools.pairwise(bounds):
        cell = extractor.extract_model([start], [end])
        cell.metadata_props.extend(model.metadata_props)  # marks it pre-processed for the quantizer
        cells.append(cell)
    return cells


def _shape(value: Any) -> tuple[int, ...]:
    """A graph input's or output's shape without its batch dimension."""
    return tuple(dim.dim_value for dim in value.type.tensor_type.shape.dim[1:])


class _Reader:
    """One calibration batch of non-negative values (a cell reads an image or a ReLU's output); the scales only
    need to be plausible, since the table times the cells and never reads their outputs."""

    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self._batches = iter([{name: np.random.default_rng(0).random((8, *shape), dtype=np.float32)}])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _quantized(cell: Any, scratch: Path, quantization: QuantizationParams) -> Path:
    """The cell quantized to int8 as compress quantizes a model (static QDQ, uint8 activations, int8 weights)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    CalibrationDataReader.register(_Reader)
    fp32, int8 = scratch / "cell.onnx", scratch / "cell-int8.onnx"
    onnx.save(cell, str(fp32))
    with _quiet_quantizer():
        quantize_static(str(fp32), str(int8), _Reader(cell.graph.input[0].name, _shape(cell.graph.input[0])),
                        quant_format=QuantFormat.QDQ, per_channel=quantization.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return int8


def _round_trip(shape: tuple[int, ...], scratch: Path) -> Path:
    """A model that quantizes its input to uint8 and back: what an int8 -> int8 edge saves."""
    import onnx
    from onnx import TensorProto, helper

    dims = ["batch", *shape]
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"])],
        "round_trip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.02]),
         helper.make_tensor("zero", TensorProto.UINT8, [], [0])])
    path = scratch / "round-trip.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _nothing(shape: tuple[int, ...], scratch: Path) -> Path:
    """A model that returns its input: the cost of a call that hands a tensor of `shape` back (`io`)."""
    import onnx
    from onnx import TensorProto, helper

    dims = ["batch", *shape]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "nothing",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    path = scratch / "nothing.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def time_ms(path: Path, shape: tuple[int, ...], batch: int, *, runs: int, threads: int) -> float:
    """Median milliseconds of `runs` calls of the model at `path` on one batch (after one untimed call)."""
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    feed = {name: np.random.default_rng(1).random((batch, *shape), dtype=np.float32)}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def shipped_precisions(cells: int, quantization: QuantizationParams) -> list[str]:
    """Each cell's precision in compress's int8 variants: int8, but the first layer and the head in fp32 when
    `quantization.keep_ends_fp32`."""
    ends = (0, cells - 1) if quantization.keep_ends_fp32 else ()
    return ["fp32" if cell in ends else "int8" for cell in range(cells)]


def network_file(arch: ModelParams, widths: Sequence[int], precisions: Sequence[str],
                 quantization: QuantizationParams, folder: Path) -> Path:
    """The network at `widths` exported and quantized as compress does it, each weighted layer (then the head) in
    its precision of `precisions` (calibrated on random images: the scales do not change the time)."""
    from groundwork.compression.export import export_onnx, quantize_int8
    from groundwork.models.digitnet import DigitNet

    exported, shipped = folder / "network.onnx", folder / "shipped.onnx"
    export_onnx(DigitNet(arch.with_widths(tuple(widths))), exported)
    if "int8" not in precisions:
        return exported
    images = np.random.default_rng(0).random((16, *IMAGE), dtype=np.float32)
    with _quiet_quantizer():
        quantize_int8(exported, shipped, images, quantization,
                      fp32_layers=[layer for layer, precision in enumerate(precisions) if precision == "fp32"])
    return shipped


def measure_network(arch: ModelParams, widths: Sequence[int], precisions: Sequence[str], *,
                    quantization: QuantizationParams, batches: Sequence[int], runs: int,
                    threads: int) -> dict[int, float]:
    """Milliseconds per call of the whole network as it ships, at each batch (end to end, not from the table)."""
    with tempfile.TemporaryDirectory(prefix="groundwork-latency-") as folder:
        path = network_file(arch, widths, precisions, quantization, Path(folder))
        return {batch: time_ms(path, IMAGE, batch, runs=runs, threads=threads) for batch in batches}


def build_table(arch: ModelParams, grid: Sequence[Sequence[int]], *, batches: Sequence[int], runs: int,
                threads: int, quantization: QuantizationParams, reference: Sequence[int], classes: int = 10,
                on_cell: OnCell | None = None) -> pd.DataFrame:
    """Every cell of `width_pairs` in both precisions, and each layer's output at every width of the grid (its
    `io`, its int8 -> int8 edge), and the floor, at each batch; and the network at widths `reference` measured
    end to end as compress ships its int8 variants (`structured_int8`: the search's budgets are shares of it)."""
    import onnx

    rows: list[dict[str, Any]] = []
    wanted = [set(cell) for cell in width_pairs(grid, classes)]
    total = sum(len(cell) for cell in wanted) * len(PRECISIONS) + 2 * sum(len(widths) for widths in grid)
    done = 0

    def add(kind: str, layer: int, pair: tuple[int, int], precision: str, path: Path, shape: tuple[int, ...]) -> None:
        nonlocal done
        for batch in batches:
            rows.append({"kind": kind, "layer": layer, "in_width": pair[0], "out_width": pair[1],
                         "precision": precision, "batch": batch,
                         "ms": time_ms(path, shape, batch, runs=runs, threads=threads)})
        done += 1
        if on_cell:
            on_cell(done, total)

    with tempfile.TemporaryDirectory(prefix="groundwork-latency-") as folder:
        scratch = Path(folder)
        outputs: set[tuple[int, int]] = set()  # (layer, width) whose io and edge are timed
        for widths in covering_widths(grid, classes):
            for layer, cell in enumerate(_cells(arch, widths, scratch)):
                pair = (([1, *widths])[layer], ([*widths, classes])[layer])
                if pair not in wanted[layer]:
                    continue
                wanted[layer].discard(pair)
                shape = _shape(cell.graph.input[0])
                onnx.save(cell, str(scratch / "fp32.onnx"))
                add("layer", layer, pair, "fp32", scratch / "fp32.onnx", shape)
                add("layer", layer, pair, "int8", _quantized(cell, scratch, quantization), shape)
                if layer < len(grid) and (layer, pair[1]) not in outputs:
                    outputs.add((layer, pair[1]))
                    out_shape = _shape(cell.graph.output[0])
                    add("io", layer, (pair[1], pair[1]), "fp32", _nothing(out_shape, scratch), out_shape)
                    add("edge", layer, (pair[1], pair[1]), "int8", _round_trip(out_shape, scratch), out_shape)
        logits = (classes,)
        for batch in batches:
            rows.append({"kind": "floor", "layer": -1, "in_width": 0, "out_width": 0, "precision": "fp32",
                         "batch": batch, "ms": time_ms(_nothing(logits, scratch), logits, batch, runs=runs,
                                                       threads=threads)})
    shipped = shipped_precisions(len(grid) + 1, quantization)
    measured = measure_network(arch, reference, shipped, quantization=quantization, batches=batches, runs=runs,
                               threads=threads)
    rows += [{"kind": "reference", "layer": -1, "in_width": 0, "out_width": 0, "precision": "int8", "batch": batch,
              "ms": ms} for batch, ms in measured.items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def read_latency_table(path: Path) -> LatencyTable:
    """The table the latency stage wrote; a missing file, or one that is not such a table, is a DataError naming
    it."""
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no latency table (run the latency stage)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a latency table ({type(exc).__name__}: {exc})") from None
    if list(table.columns) != COLUMNS or table.empty or not np.isfinite(table["ms"]).all() \
            or (table["ms"] < 0).any() or not (table["kind"] == "floor").any():
        raise DataError(f"{path}: not a latency table (columns {COLUMNS}, at least a floor row, every ms finite "
                        f"and not negative)")
    return LatencyTable(table, path)


class LatencyTable:
    """Estimates of a network's latency from a table `build_table` wrote; see the module docstring."""

    def __init__(self, table: pd.DataFrame, source: Path | str = "latency table") -> None:
        self.source = source
        self._ms = {(row.kind, int(row.layer), int(row.in_width), int(row.out_width), row.precision, int(row.batch)):
                    float(row.ms) for row in table.itertuples()}
        self.batches = sorted({int(batch) for batch in table["batch"]})

    def network_ms(self, widths: Sequence[int], precisions: Sequence[str], batch: int, classes: int = 10) -> float:
        """Milliseconds of one call of the network at `widths` (prunable layers), each cell (those layers, then
        the head) in its precision of `precisions`, on a batch of `batch`."""
        ins, outs = [1, *widths], [*widths, classes]
        return self.floor(batch) + sum(self.cell_term(cell, ins[cell], outs[cell], precisions, batch)
                                       for cell in range(len(ins)))

    def cell_term(self, cell: int, inputs: int, outputs: int, precisions: Sequence[str], batch: int) -> float:
        """One cell's share of `network_ms`, each cell in its precision of `precisions` (see `pair_term`)."""
        return self.pair_term(cell, inputs, outputs, precisions[cell], precisions[cell - 1] if cell else None,
                              head=cell == len(precisions) - 1, batch=batch)

    def pair_term(self, cell: int, inputs: int, outputs: int, precision: str, previous: str | None, *, head: bool,
                  batch: int) -> float:
        """One cell's share of `network_ms` in `precision`, after a cell in `previous` (None: the first): its time
        less its output's hand-back, less the round trip on its input when it and the cell before it are both int8
        (the shipped file fuses that pair away)."""
        hand_back = self.floor(batch) if head else self._cell(("io", cell, outputs, outputs, "fp32", batch))
        term = self._cell(("layer", cell, inputs, outputs, precision, batch)) - hand_back
        if previous == precision == "int8":
            term -= (self._cell(("edge", cell - 1, inputs, inputs, "int8", batch))
                     - self._cell(("io", cell - 1, inputs, inputs, "fp32", batch)))
        return term

    def reference(self, batch: int) -> float:
        """`structured_int8`'s latency at `batch`, measured end to end when the table was built."""
        return self._cell(("reference", -1, 0, 0, "int8", batch))

    def floor(self, batch: int) -> float:
        """The runtime's cost of a call that hands back only the logits, at `batch`: no network costs less."""
        return self._cell(("floor", -1, 0, 0, "fp32", batch))

    def _cell(self, key: tuple[str, int, int, int, str, int]) -> float:
        try:
            return self._ms[key]
        except KeyError:
            kind, layer, inputs, outputs, precision, batch = key
            raise DataError(f"{self.source}: no {precision} {kind} for cell {layer} at widths {inputs} -> {outputs}, "
                            f"batch {batch}: the table was built for other widths, batches or params "
                            "(run the latency stage)") from None
