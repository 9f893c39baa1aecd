"""compress: every variant (pruned, structured, lowrank, int8, structured_int8, packed), the techniques behind
them, and the deployable files, loaded in fresh processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from groundwork.compression.export import MANIFEST, onnx_logits, onnx_session
from groundwork.compression.lowrank import factorize, rank_for_energy
from groundwork.compression.names import EXPORTED
from groundwork.compression.packing import load_packed, pack, share_weights, tie_to_codebooks, untie
from groundwork.compression.pruning import make_permanent, prune_to, sparsity
from groundwork.compression.structured import narrower, prune_channels
from groundwork.data.datasets import load_dataset, to_float
from groundwork.errors import CheckpointError
from groundwork.models.checkpoint import load_model, save_checkpoint
from groundwork.models.digitnet import DigitNet, prunable_layers
from groundwork.params import Params
from groundwork.project import ROOT
from groundwork.tracking.runs import NullTracker
from groundwork.training.distill import UNLABELLED, distillation
from groundwork.training.loop import derived_seed, logits_of

CPU = torch.device("cpu")

ONNX_VARIANTS = ("fp32", "pruned", "structured", "searched", "lowrank", "int8", "structured_int8", "searched_int8")


def target_test_images(tiny_data: dict[str, Path]) -> torch.Tensor:
    target, _ = load_dataset(tiny_data["target"], splits=("test",))
    return target["test"].tensors()[0]


def test_global_pruning_reaches_the_exact_sparsity(tiny_transferred: dict[str, Any]) -> None:
    model, _ = load_model(tiny_transferred["model"])
    prune_to(model, 0.5)
    assert sparsity(model) == pytest.approx(0.5, abs=1e-3)
    prune_to(model, 0.75)  # a second round keeps the first round's zeros
    make_permanent(model)
    assert sparsity(model) == pytest.approx(0.75, abs=1e-3)
    assert not any("weight_orig" in key for key in model.state_dict())


def test_removing_dead_channels_changes_nothing(tiny_params: Params, tiny_transferred: dict[str, Any],
                                                tiny_data: dict[str, Path]) -> None:
    """Channels whose BatchNorm scale and shift are zero output nothing: structured pruning must pick exactly
    those, and the narrower network must compute the same logits."""
    model, _ = load_model(tiny_transferred["model"])
    arch = narrower(model.arch, 0.5)
    with torch.no_grad():
        for block, width in zip(model.backbone.features, arch.channels, strict=True):
            for norm in (block[1], block[4]):
                norm.weight[width:] = 0
                norm.bias[width:] = 0
        model.backbone.embed[2].weight[arch.embedding_dim:] = 0
        model.backbone.embed[2].bias[arch.embedding_dim:] = 0
    small = prune_channels(model, arch)
    assert list(small.arch.channels) == [c // 2 for c in tiny_params.model.channels]
    assert sum(p.numel() for p in small.parameters()) < 0.35 * sum(p.numel() for p in model.parameters())
    images = target_test_images(tiny_data)
    torch.testing.assert_close(logits_of(small, images, device=CPU), logits_of(model, images, device=CPU),
                               atol=1e-4, rtol=1e-4)


def test_rank_follows_the_energy_threshold() -> None:
    singular = torch.tensor([3.0, 2.0, 1.0, 0.0])  # squared: 9, 4, 1 of 14
    assert rank_for_energy(singular, 9 / 14 - 1e-6) == 1
    assert rank_for_energy(singular, 13 / 14 - 1e-6) == 2
    assert rank_for_energy(singular, 13 / 14 + 1e-6) == 3


def test_full_energy_factorisation_computes_the_same_and_reloads(tmp_path: Path, tiny_transferred: dict[str, Any],
                                                                 tiny_data: dict[str, Path]) -> None:
    """A layer whose weight has rank 4 is replaced by a rank-4 pair that computes the same."""
    model, _ = load_model(tiny_transferred["model"])
    embed = model.backbone.embed[1].weight
    with torch.no_grad():
        embed.copy_(torch.randn(embed.shape[0], 4) @ torch.randn(4, embed.shape[1]) * embed.std() / 2)
    images = target_test_images(tiny_data)
    before = logits_of(model, images, device=CPU)
    ranks = factorize(model, 0.9999999)
    assert ranks["backbone.embed.1"] == 4
    assert isinstance(model.get_submodule("backbone.embed.1"), torch.nn.Sequential)
    torch.testing.assert_close(logits_of(model, images, device=CPU), before, atol=1e-3, rtol=1e-3)
    save_checkpoint(tmp_path / "lowrank.pt", model, stage="test", params={}, metrics={})
    reloaded, _ = load_model(tmp_path / "lowrank.pt")
    assert reloaded.factorized == ranks
    torch.testing.assert_close(logits_of(reloaded, images, device=CPU), logits_of(model, images, device=CPU))


def test_weight_sharing_is_exact_when_values_fit_the_codebook() -> None:
    values = torch.tensor([-0.5, 0.25, 0.25, 1.0, -0.5, 1.0])
    codebook, codes = share_weights(values, 3)
    torch.testing.assert_close(codebook[codes], values)


def test_packed_round_trip_keeps_zeros_and_codebooks(tmp_path: Path, tiny_transferred: dict[str, Any]) -> None:
    model, _ = load_model(tiny_transferred["model"])
    prune_to(model, 0.9)
    make_permanent(model)
    pack(model, tmp_path / "model.gwpk", bits=3)
    restored = load_packed(tmp_path / "model.gwpk")
    loaded_state = restored.state_dict()
    assert loaded_state.keys() == model.state_dict().keys()
    for name, original in model.state_dict().items():
        loaded = loaded_state[name]
        if name.endswith("weight") and original.dim() > 1:
            assert torch.equal(original == 0, loaded == 0), f"{name}: pruned weights stay exactly zero"
            assert loaded.unique().numel() <= 2 ** 3, f"{name}: at most 7 shared values plus zero"
            assert (loaded - original).abs().max() < 0.25 * original.abs().max()
        else:
            torch.testing.assert_close(loaded, original.to(loaded.dtype), atol=1e-2, rtol=1e-3)  # float16


def test_codebook_fine_tuning_moves_shared_values_and_keeps_zeros(tiny_transferred: dict[str, Any]) -> None:
    model, _ = load_model(tiny_transferred["model"])
    prune_to(model, 0.8)
    make_permanent(model)
    zeros = {name: weight == 0 for name, weight in model.state_dict().items() if weight.dim() > 1}
    tie_to_codebooks(model, bits=3)
    shared = [module.weight.detach().clone() for module, _ in prunable_layers(model)]  # the tied values
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert not any(p is module.parametrizations.weight.original for module, _ in prunable_layers(model)
                   for p in trainable), "the raw weights are frozen: only the codebooks move"
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    model.train()
    torch.nn.functional.cross_entropy(model(torch.rand(8, 1, 28, 28)), torch.arange(8)).backward()
    optimizer.step()
    untie(model)
    for name, mask in zeros.items():
        weight = model.state_dict()[name]
        assert torch.equal(weight == 0, mask), f"{name}: pruned weights stay zero, shared ones stay non-zero"
        assert weight[weight != 0].unique().numel() <= 7, f"{name}: still at most 7 shared values"
    after = [module.weight.detach() for module, _ in prunable_layers(model)]
    assert any(not torch.equal(a, b) for a, b in zip(after, shared, strict=True)), "the codebooks moved"


def test_packed_file_errors_name_the_file(tmp_path: Path, tiny_compressed: dict[str, Any]) -> None:
    broken = tmp_path / "broken.gwpk"
    broken.write_bytes((tiny_compressed["dir"] / "packed.gwpk").read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"broken\.gwpk: corrupt or truncated"):
        load_packed(broken)
    foreign = tmp_path / "foreign.gwpk"
    foreign.write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(CheckpointError, match=r"foreign\.gwpk: not a packed model"):
        load_packed(foreign)


def test_distillation_learns_from_the_teacher_on_unlabelled_images(tiny_params: Params) -> None:
    torch.manual_seed(0)
    teacher, student = DigitNet(tiny_params.model).eval(), DigitNet(tiny_params.model).eval()
    inputs = torch.rand(6, 1, 28, 28)
    labels = torch.tensor([1, 2, 3, UNLABELLED, UNLABELLED, UNLABELLED])
    generator = torch.Generator()
    plain, _ = distillation(teacher, weight=0.0, temperature=4.0)(student, inputs[:3], labels[:3], generator)
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(student(inputs[:3]), labels[:3]))
    unlabelled_only, _ = distillation(teacher, weight=0.5, temperature=2.0)(student, inputs[3:], labels[3:],
                                                                            generator)
    assert unlabelled_only > 0
    unlabelled_only.backward()
    assert student.head[1].weight.grad is not None and student.head[1].weight.grad.abs().sum() > 0
    itself, _ = distillation(student, weight=1.0, temperature=2.0)(student, inputs[3:], labels[3:], generator)
    assert itself.item() == pytest.approx(0.0, abs=1e-6), "a student that matches its teacher has nothing to learn"


def test_every_variant_is_written_and_listed(tiny_params: Params, tiny_compressed: dict[str, Any]) -> None:
    folder, metrics = tiny_compressed["dir"], tiny_compressed["metrics"]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert list(manifest) == list(EXPORTED)
    assert all((folder / entry["file"]).is_file() for entry in manifest.values())
    pruned, _ = load_model(folder / "pruned.pt")
    assert sparsity(pruned) == pytest.approx(tiny_params.compress.sparsity, abs=2e-3) == metrics["sparsity"]
    assert manifest["pruned"]["nonzero_params"] < 0.3 * manifest["pruned"]["params"]
    assert manifest["structured"]["params"] < 0.5 * manifest["fp32_onnx"]["params"]
    searched, _ = load_model(folder / "searched.pt")  # the widths the search chose, layer by layer
    assert list(searched.arch.layer_widths()) == json.loads(tiny_compressed["policy"].read_text())["widths"]
    assert metrics["searched_widths"] == list(searched.arch.layer_widths())
    assert manifest["lowrank"]["params"] < manifest["fp32_onnx"]["params"]
    sizes = {name: (folder / entry["file"]).stat().st_size for name, entry in manifest.items()}
    assert sizes["int8"] < 0.5 * sizes["fp32_onnx"]
    assert sizes["structured"] < 0.5 * sizes["fp32_onnx"]
    assert sizes["structured_int8"] < 0.75 * sizes["structured"]  # quantization parameters weigh on a tiny net
    assert metrics["packed_times_smaller"] > 8, "even the tiny model packs far below its state dict"


def test_int8_models_run_integer_kernels(tiny_compressed: dict[str, Any]) -> None:
    for name in ("int8", "structured_int8", "searched_int8"):
        graph = onnx.load(str(tiny_compressed["dir"] / f"{name}.onnx")).graph
        assert sum(node.op_type == "QuantizeLinear" for node in graph.node) > 0
        assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)


# Runs with ONNX Runtime and NumPy alone, in isolated mode (-I): the project's code cannot be imported.
STANDALONE_ONNX = """
import sys, numpy, onnxruntime
images = numpy.load(sys.argv[1])
for path in sys.argv[3:]:
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    numpy.save(sys.argv[2] + "/" + path.rsplit("/", 1)[-1] + ".npy", session.run(None, {"images": images})[0])
"""
STANDALONE_PACKED = """
import sys, numpy, torch
from groundwork.compression.packing import load_packed
model = load_packed(sys.argv[2])
with torch.no_grad():
    numpy.save(sys.argv[3], model(torch.from_numpy(numpy.load(sys.argv[1]))).numpy())
"""


@pytest.mark.subprocess
def test_exported_files_predict_as_in_process_in_a_fresh_process(tmp_path: Path, tiny_data: dict[str, Path],
                                                                  tiny_transferred: dict[str, Any],
                                                                  tiny_compressed: dict[str, Any]) -> None:
    folder = tiny_compressed["dir"]
    images = target_test_images(tiny_data)
    np.save(tmp_path / "images.npy", to_float(images).numpy())
    paths = [str(folder / f"{name}.onnx") for name in ONNX_VARIANTS]
    subprocess.run([sys.executable, "-I", "-c", STANDALONE_ONNX, str(tmp_path / "images.npy"), str(tmp_path), *paths],
                   cwd=tmp_path, check=True)
    in_process = {"fp32": load_model(tiny_transferred["model"])[0],
                  **{name: load_model(folder / f"{name}.pt")[0]
                     for name in ("pruned", "structured", "searched", "lowrank")}}
    for name in ONNX_VARIANTS:
        fresh = torch.from_numpy(np.load(tmp_path / f"{name}.onnx.npy"))
        if name in in_process:  # fp32 files: the same numbers as the PyTorch model, to float tolerance
            torch.testing.assert_close(fresh, logits_of(in_process[name], images, device=CPU), atol=1e-3, rtol=1e-3)
        else:  # int8 files: the same numbers as the same file run in this process
            torch.testing.assert_close(fresh, onnx_logits(onnx_session(folder / f"{name}.onnx"), images))
    subprocess.run([sys.executable, "-c", STANDALONE_PACKED, str(tmp_path / "images.npy"),
                    str(folder / "packed.gwpk"), str(tmp_path / "packed.npy")], cwd=ROOT, check=True)
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "packed.npy")),
                               logits_of(load_packed(folder / "packed.gwpk"), images, device=CPU),
                               atol=1e-4, rtol=1e-4)


def test_a_variant_does_not_depend_on_the_variants_made_before_it(tiny_params: Params, tiny_data: dict[str, Path],
                                                                   tiny_transferred: dict[str, Any]) -> None:
    """Every fine-tune takes its seed from the seed, the variant and the round: the pruned model comes out the same
    whether or not the low-rank model was fine-tuned first with the same fine-tuner."""
    from groundwork.compression.finetuning import fine_tuner, low_rank, magnitude_pruned

    data, _ = load_dataset(tiny_data["target"], splits=("train", "val", "test", "pool"))

    def pruned(after_lowrank: bool) -> dict[str, torch.Tensor]:
        tune = fine_tuner(tiny_params, data, load_model(tiny_transferred["model"])[0], CPU, NullTracker())
        if after_lowrank:
            low_rank(load_model(tiny_transferred["model"])[0], tiny_params, tune)
        return magnitude_pruned(load_model(tiny_transferred["model"])[0], tiny_params, tune).state_dict()

    alone, after = pruned(after_lowrank=False), pruned(after_lowrank=True)
    assert alone.keys() == after.keys()
    assert all(torch.equal(alone[key], after[key]) for key in alone)
    assert len({derived_seed(42, variant, step) for variant in ("pruned", "structured") for step in (1, 2)}) == 4


@pytest.mark.subprocess
def test_variants_fine_tuned_in_two_processes_come_out_exactly_as_in_this_one(
        tiny_params: Params, tiny_data: dict[str, Path], tiny_transferred: dict[str, Any]) -> None:
    """`compress.workers`: every trained variant (packed too) has the same weights, and its rounds the same logged
    accuracies, whether the jobs run here one after the other or in two worker processes, at a thread each."""
    from groundwork.compression.variants import TRAINED, train_variant, variant_jobs
    from groundwork.training.jobs import run_jobs

    jobs = variant_jobs(tiny_params, transferred=tiny_transferred["model"], target=tiny_data["target"],
                        searched=narrower(tiny_params.model, 0.75))
    before = torch.get_num_threads()
    results = {}
    try:
        for workers, threads in ((1, 1), (2, 2)):  # a thread per variant both times: the same arithmetic
            torch.set_num_threads(threads)
            results[workers] = list(run_jobs(train_variant, jobs, workers))
    finally:
        torch.set_num_threads(before)
    for here, there in zip(results[1], results[2], strict=True):
        assert here.logged == there.logged and here.logged  # (metrics, round) of every fine-tune, in order
        assert here.models.keys() == there.models.keys()
        for name, model in here.models.items():
            ours, theirs = model.state_dict(), there.models[name].state_dict()
            assert ours.keys() == theirs.keys()
            assert all(torch.equal(ours[key], theirs[key]) for key in ours), name
    assert {name for result in results[2] for name in result.models} == {*TRAINED, "packed"}


def test_int8_options_change_the_quantized_graph_as_asked(tmp_path: Path, tiny_data: dict[str, Path],
                                                        tiny_compressed: dict[str, Any]) -> None:
    """compress.quantization: per-tensor weights have one scale each, the kept ends stay fp32 (their weights are
    not quantized), and every calibration method gives a file that predicts as fp32 mostly does."""
    from groundwork.compression.export import WEIGHTED_OPS, calibration_images, quantize_int8, weighted_nodes
    from groundwork.params.compression import QuantizationParams

    fp32 = tiny_compressed["dir"] / "fp32.onnx"
    data, _ = load_dataset(tiny_data["target"], splits=("val", "test", "pool"))
    calibration = calibration_images(data, 70)  # more than one batch, and not a multiple of 64
    images = data["test"].tensors()[0]
    reference = onnx_logits(onnx_session(fp32), images).argmax(1)

    def quantized(name: str, fp32_layers: list[int] | None = None, **options: Any) -> onnx.ModelProto:
        settings = {"method": "minmax", "per_channel": True, "keep_ends_fp32": False, **options}
        quantize_int8(fp32, tmp_path / f"{name}.onnx", calibration, QuantizationParams(**settings), fp32_layers)
        agree = (onnx_logits(onnx_session(tmp_path / f"{name}.onnx"), images).argmax(1) == reference).float().mean()
        assert agree > 0.8, f"{name}: int8 agrees with fp32 on only {agree:.0%} of the test images"
        return onnx.load(str(tmp_path / f"{name}.onnx"))

    def weight_scales(model: onnx.ModelProto) -> list[int]:
        sizes = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
        weights = {node.input[1] for node in model.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")}
        return [sizes[node.input[1]] for node in model.graph.node
                if node.op_type == "DequantizeLinear" and node.output[0] in weights]

    assert max(weight_scales(quantized("per_channel"))) > 1
    assert set(weight_scales(quantized("per_tensor", per_channel=False))) == {1}
    for method in ("entropy", "percentile"):
        quantized(method, method=method)
    def fp32_layers(model: onnx.ModelProto) -> list[int]:
        """The positions (forward order, the head last) of the weighted layers whose weights stayed fp32."""
        producers = {output: node.op_type for node in model.graph.node for output in node.output}
        weighted = [node for node in model.graph.node if node.op_type in WEIGHTED_OPS]
        assert len(weighted) == len(weighted_nodes(fp32)), "one weighted node per layer, as exported"
        return [index for index, node in enumerate(weighted) if producers.get(node.input[1]) != "DequantizeLinear"]

    last = len(weighted_nodes(fp32)) - 1
    assert fp32_layers(quantized("kept", keep_ends_fp32=True)) == [0, last]
    assert fp32_layers(quantized("all")) == []
    # a per-layer choice (the search's mixed precision) overrides the ends' rule
    assert fp32_layers(quantized("second", fp32_layers=[1], keep_ends_fp32=True)) == [1]
