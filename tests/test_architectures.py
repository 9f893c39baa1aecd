"""The architectures of `model.arch`: LeNet-5 (convs and dense layers, no BatchNorm) through every stage
(pretrain, transfer, budget, search, compress with each variant, evaluate) with tiny params, and every
architecture's checkpoint and packed file loading from the file alone. (The CNN runs through the stages in the
other modules' fixtures; the MLP's pruning and multiply-adds are checked in test_search.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from groundwork.compression.names import VARIANTS
from groundwork.compression.packing import load_packed, pack
from groundwork.data.datasets import load_dataset
from groundwork.models.checkpoint import load_model, save_checkpoint
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params, parse_params
from groundwork.project import tiny_params_dict
from groundwork.training.loop import loss_and_accuracy
from tasks import budget, compress, evaluate, pretrain, search, transfer

ARCHITECTURES = {
    "mlp": {"arch": "mlp", "hidden": [48, 24], "dropout": 0.0, "pixel_mean": 0.5, "pixel_std": 0.5},
    "lenet5": {"arch": "lenet5", "channels": [12, 24], "embedding_dim": 32},
}


def test_lenet5_runs_through_every_stage(tmp_path: Path, tiny_data: dict[str, Path],
                                        measure_latency: Callable[[Params, Path], dict[str, Any]]) -> None:
    name = "lenet5"
    params = parse_params(tiny_params_dict(model=ARCHITECTURES[name], pretrain={"epochs": 1, "augmentation": "none"},
                                           budget={"labels_per_class": [3], "draws": 1},
                                           search={"episodes": 4, "warmup_episodes": 2},
                                           compress={"prune_iterations": 1, "distillation": {"unlabelled": False}}))
    out = {key: tmp_path / key for key in ("pretrained.pt", "transfer.pt", "policy.json", "compressed")}
    pretrained = pretrain.run(params, train=tiny_data["source"], source=tiny_data["source"],
                              model_out=out["pretrained.pt"], history_out=tmp_path / "pretrain.csv")
    source, _ = load_dataset(tiny_data["source"], splits=("train",))
    saved, _ = load_model(out["pretrained.pt"])  # what pretrain reports is the saved model on its training images
    assert pretrained["source_train_accuracy"] == pytest.approx(
        loss_and_accuracy(saved, *source["train"].tensors(), device=torch.device("cpu"))["accuracy"])
    transfer.run(params, pretrained=out["pretrained.pt"], target=tiny_data["target"], model_out=out["transfer.pt"],
                 history_out=tmp_path / "transfer.csv")
    budget.run(params, pretrained=out["pretrained.pt"], target=tiny_data["target"], table_out=tmp_path / "b.csv",
               curve_out=tmp_path / "b.png")
    searched = search.run(params, transferred=out["transfer.pt"], target=tiny_data["target"],
                          latency=measure_latency(params, tmp_path)["table"], policy_out=out["policy.json"],
                          table_out=tmp_path / "s.csv", plot_out=tmp_path / "s.png")
    assert len(searched["methods"]["agent"]["widths"]) == len(params.model.layer_widths())
    compressed = compress.run(params, transferred=out["transfer.pt"], target=tiny_data["target"],
                              policy=out["policy.json"], out_dir=out["compressed"])
    structured = compressed["structured_widths"]
    assert structured == [-(-width // 2) for width in params.model.layer_widths()]  # channels_kept 0.5, rounded up
    scored = evaluate.run(params, transferred=out["transfer.pt"], compressed=out["compressed"],
                          target=tiny_data["target"], table_out=tmp_path / "e.csv", confusion_out=tmp_path / "c.png",
                          pareto_out=tmp_path / "p.png", predictions_dir=tmp_path / "predictions")
    assert list(scored["variants"]) == list(VARIANTS)
    assert scored["variants"]["packed"]["times_smaller_than_fp32_state_dict"] > 5
    # the files describe themselves: no params needed to load them, and they compute what was saved
    model, _ = load_model(out["compressed"] / "structured.pt")
    assert model.arch.arch == name and list(model.arch.layer_widths()) == structured
    reference, _ = load_model(out["transfer.pt"])
    assert reference.arch == params.model and load_packed(out["compressed"] / "packed.gwpk").arch == params.model


@pytest.mark.parametrize("name", ["cnn", *ARCHITECTURES])
def test_every_architecture_saves_and_packs_a_self_describing_model(name: str, tmp_path: Path) -> None:
    params = parse_params(tiny_params_dict(model=ARCHITECTURES.get(name, {})))
    torch.manual_seed(0)
    model = DigitNet(params.model).eval()
    save_checkpoint(tmp_path / "model.pt", model, stage="pretrain", params={}, metrics={})
    pack(model, tmp_path / "model.gwpk", bits=8)
    loaded, packed = load_model(tmp_path / "model.pt")[0], load_packed(tmp_path / "model.gwpk")
    assert loaded.arch == packed.arch == params.model and loaded.arch.arch == name
    images = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded(images), model(images))
    torch.testing.assert_close(packed(images), model(images), atol=0.1, rtol=0.1)  # 8-bit shared weights
