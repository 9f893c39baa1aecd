"""transfer: a new head on the pretrained backbone, a from-scratch baseline with the same steps, the gain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from groundwork.data.datasets import load_dataset
from groundwork.models.checkpoint import load_model
from groundwork.params import Params, parse_params
from groundwork.project import tiny_params_dict
from groundwork.training.loop import loss_and_accuracy
from groundwork.training.transfer_learning import fine_tune, param_groups, transferred_model


def test_kept_head_is_the_source_head(tiny_pretrained: dict[str, Any]) -> None:
    pretrained, _ = load_model(tiny_pretrained["model"])
    source = {k: v.clone() for k, v in pretrained.state_dict().items()}
    model = transferred_model(pretrained, seed=1, head="keep")
    assert all(torch.equal(source[k], v) for k, v in model.state_dict().items()), "a warm start changes nothing"


def test_new_head_keeps_the_backbone(tiny_pretrained: dict[str, Any]) -> None:
    pretrained, _ = load_model(tiny_pretrained["model"])
    backbone = {k: v.clone() for k, v in pretrained.backbone.state_dict().items()}
    old_head = pretrained.head[1].weight.clone()
    model = transferred_model(pretrained, seed=1)
    assert all(torch.equal(backbone[k], v) for k, v in model.backbone.state_dict().items())
    assert not torch.equal(model.head[1].weight, old_head)


def backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}


@pytest.mark.parametrize("mode", ["linear_probe", "finetune", "discriminative"])
def test_modes_train_what_they_name(mode: str, tiny_pretrained: dict[str, Any], tiny_data: dict[str, Path]) -> None:
    params = parse_params(tiny_params_dict(transfer={"mode": mode, "epochs": 3, "freeze_epochs": 1}))
    data, _ = load_dataset(tiny_data["target"], splits=("train", "val", "test", "pool"))
    pretrained, _ = load_model(tiny_pretrained["model"])
    before = backbone_state(pretrained)
    model = transferred_model(pretrained, seed=0)
    head_before = model.head[1].weight.detach().clone()
    history = fine_tune(model, data, params, seed=0)
    after = backbone_state(model)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert not torch.equal(model.head[1].weight, head_before)
    unchanged = all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert unchanged == (mode == "linear_probe")
    assert all(p.requires_grad for p in model.parameters()), "the saved model is not left frozen"


def test_discriminative_groups_scale_the_backbone_lr(tiny_pretrained: dict[str, Any]) -> None:
    model, _ = load_model(tiny_pretrained["model"])
    groups = param_groups(model, lr=0.01, backbone_lr_scale=0.1)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.001)]
    assert len(groups[1]["params"]) == len(list(model.backbone.parameters()))


def test_reports_transfer_scratch_and_gain(tiny_params: Params, tiny_data: dict[str, Path],
                                           tiny_transferred: dict[str, Any]) -> None:
    metrics = tiny_transferred["metrics"]
    assert metrics["train_images"] == 10 * tiny_params.ingest.labels_per_class
    model, _ = load_model(tiny_transferred["model"])
    target, _ = load_dataset(tiny_data["target"], splits=("test",))
    rescored = loss_and_accuracy(model, *target["test"].tensors(), device=torch.device("cpu"))
    assert rescored["accuracy"] == pytest.approx(metrics["transfer_accuracy"])


def test_history_holds_both_models_with_the_same_epochs(tiny_params: Params,
                                                        tiny_transferred: dict[str, Any]) -> None:
    history = pd.read_csv(tiny_transferred["history"])
    assert history["epoch"].tolist() == list(range(1, tiny_params.transfer.epochs + 1))
    for name in ("transfer", "scratch"):
        assert {f"{name}_train_loss", f"{name}_val_accuracy"} <= set(history.columns)
