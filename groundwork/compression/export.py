"""Deployable files: ONNX export, int8 static quantization with ONNX Runtime, running them, sizing them."""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundwork.data.atomic import atomic_path
from groundwork.data.datasets import Dataset, Split, to_float
from groundwork.params.compression import QuantizationParams

log = logging.getLogger(__name__)
# ONNX Runtime's pre-processing logs "Performing symbolic shape inference..." at INFO for every model it prepares:
# the search quantizes hundreds of candidates, and the line says nothing a stage log needs
logging.getLogger("onnxruntime.quantization.shape_inference").setLevel(logging.WARNING)
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
MANIFEST = "variants.json"  # the compress stage's list of variants: file, runtime, parameter counts
TIMING_THREADS = 2  # every variant (and the latency table) timed with the same thread budget: the reference cores


def export_onnx(model: torch.nn.Module, path: Path) -> None:
    """Export with the TorchScript exporter (a trace), batch size dynamic, BatchNorm folded into the convs.

    Why not torch.export's exporter, torch's default since 2.9: on these models it writes the same function
    (`test_exported_files_predict_as_in_process_in_a_fresh_process`) but cost 1.9-2.7 s a model here, 8 s for the
    first in a process, against 0.04-0.08 s for the trace (`bench/export.py`); compress exports five models per
    run and adapt one per challenger. The models are plain conv / dense graphs with no data-dependent control
    flow, which a trace captures exactly. A BatchNorm after a dense layer stays a node of its own here; ONNX
    Runtime folds it into the layer when it loads or quantizes the file."""
    model = model.eval().cpu().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 1, 28, 28)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the exporter's notes on itself, and its own helpers'
        torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamo=False, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          external_data=False)


class _Calibration:
    """Feeds calibration batches to ONNX Runtime's quantizer (its CalibrationDataReader protocol)."""

    def __init__(self, images: np.ndarray, largest: int = 64) -> None:
        # batches of one size: ONNX Runtime's histogram calibrators (entropy, percentile) stack them into one array
        batch = max(size for size in range(1, min(largest, len(images)) + 1) if len(images) % size == 0)
        self._batches = iter([images[i:i + batch] for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def calibration_images(data: Dataset, count: int) -> np.ndarray:
    """Unlabelled target images (the training pool, then val) in the models' input format, for int8
    calibration: never the test split."""
    images = torch.cat([data["pool"].tensors()[0], data["val"].tensors()[0]])[:count]
    return to_float(images).numpy()


WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


def weighted_nodes(path: Path) -> list[str]:
    """Names of the Conv / Gemm / MatMul nodes of an ONNX graph in order: each prunable layer's, then the head's."""
    import onnx

    return [node.name for node in onnx.load(str(path)).graph.node if node.op_type in WEIGHTED_OPS]


def fp32_cells(precisions: Sequence[str]) -> list[int]:
    """The weighted layers (in forward order, the head last) that `precisions` leaves in fp32."""
    return [cell for cell, precision in enumerate(precisions) if precision == "fp32"]


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, quantization: QuantizationParams,
                  fp32_layers: Sequence[int] | None = None) -> None:
    """Static int8 quantization (QDQ, activations calibrated on real images) as `quantization` says: the
    calibration method, per-channel or per-tensor weights. The weighted layers at `fp32_layers` (indices in
    forward order, the head last) stay fp32; without them, the first and last (the layers that see raw pixels and
    that write the logits, the two most sensitive to int8 rounding) when `quantization.keep_ends_fp32`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    CalibrationDataReader.register(_Calibration)
    with tempfile.TemporaryDirectory() as scratch, atomic_path(out_path) as tmp:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))  # shape inference and graph fusions first
        weighted = weighted_nodes(prepared)
        if fp32_layers is None:
            fp32_layers = (0, len(weighted) - 1) if quantization.keep_ends_fp32 and weighted else ()
        excluded = sorted({weighted[layer] for layer in fp32_layers})
        quantize_static(str(prepared), str(tmp), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=quantization.per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=methods[quantization.method],
                        nodes_to_exclude=excluded)


def onnx_session(path: Path, threads: int = TIMING_THREADS) -> Any:
    """An ONNX Runtime CPU session with a fixed thread count, for fair timing."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session: Any, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Logits of an ONNX session for uint8 images (N, 28, 28)."""
    chunks = [session.run([OUTPUT_NAME], {INPUT_NAME: to_float(images[i:i + batch]).numpy()})[0]
              for i in range(0, len(images), batch)]
    return torch.from_numpy(np.concatenate(chunks))


def onnx_accuracy(path: Path, split: Split) -> float:
    """Accuracy of an ONNX file on a labelled split, run by ONNX Runtime."""
    images, labels = split.tensors()
    return float((onnx_logits(onnx_session(path), images).argmax(1) == labels).float().mean())


def size_report(path: Path) -> dict[str, int]:
    """Bytes on disk and bytes after zlib (level 9): the second shows what zeros and sharing save."""
    data = Path(path).read_bytes()
    return {"bytes": len(data), "compressed_bytes": len(zlib.compress(data, 9))}


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Learned parameters, and those not zero."""
    return {"params": sum(p.numel() for p in model.parameters()),
            "nonzero_params": sum(int(p.count_nonzero()) for p in model.parameters())}


def state_dict_bytes(model: torch.nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())`: the reference size compression is measured against."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes
