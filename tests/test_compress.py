"""compress: global magnitude pruning to the target sparsity, int8 on ONNX Runtime, sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

from tasks.checkpoint import load_model
from tasks.data import load_dataset
from tasks.export import onnx_logits, onnx_session
from tasks.params import Params
from tasks.pruning import make_permanent, prune_to, sparsity
from tasks.training import logits_of


def test_global_pruning_reaches_the_exact_sparsity(tiny_transferred: dict[str, Any]) -> None:
    model, _ = load_model(tiny_transferred["model"])
    prune_to(model, 0.5)
    assert sparsity(model) == pytest.approx(0.5, abs=1e-3)
    prune_to(model, 0.75)  # a second round keeps the first round's zeros
    make_permanent(model)
    assert sparsity(model) == pytest.approx(0.75, abs=1e-3)
    assert not any("weight_orig" in key for key in model.state_dict())


def test_variants_are_written_and_sparse(tiny_params: Params, tiny_compressed: dict[str, Any]) -> None:
    folder, metrics = tiny_compressed["dir"], tiny_compressed["metrics"]
    assert sorted(p.name for p in folder.iterdir()) == ["fp32.onnx", "int8.onnx", "pruned.pt"]
    pruned, _ = load_model(folder / "pruned.pt")
    assert sparsity(pruned) == pytest.approx(tiny_params.compress.sparsity, abs=2e-3) == metrics["sparsity"]
    sizes = metrics["size"]
    # zeros compress: the pruned checkpoint shrinks far more under zlib than the dense one
    assert sizes["pruned_checkpoint"]["compressed_bytes"] < 0.6 * sizes["fp32_checkpoint"]["compressed_bytes"]
    assert sizes["int8_onnx"]["bytes"] < 0.5 * sizes["fp32_onnx"]["bytes"]


def test_int8_model_runs_integer_kernels_and_agrees(tiny_data: dict[str, Path], tiny_transferred: dict[str, Any],
                                                    tiny_compressed: dict[str, Any]) -> None:
    graph = onnx.load(str(tiny_compressed["dir"] / "int8.onnx")).graph
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) > 0
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)
    target, _ = load_dataset(tiny_data["target"], splits=("test",))
    images = target["test"].tensors()[0]
    reference, _ = load_model(tiny_transferred["model"])
    expected = logits_of(reference, images, device=torch.device("cpu")).argmax(1)
    fp32 = onnx_logits(onnx_session(tiny_compressed["dir"] / "fp32.onnx"), images).argmax(1)
    int8 = onnx_logits(onnx_session(tiny_compressed["dir"] / "int8.onnx"), images).argmax(1)
    assert (fp32 == expected).float().mean() > 0.99, "the ONNX export computes what the PyTorch model does"
    assert (int8 == expected).float().mean() > 0.9, "int8 keeps nearly every prediction"
