"""transfer: a new head on the pretrained backbone, a from-scratch baseline with the same steps, the gain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from tasks.checkpoint import load_model
from tasks.data import load_dataset
from tasks.params import Params
from tasks.training import evaluate
from tasks.transfer import param_groups, transferred_model


def test_new_head_keeps_the_backbone(tiny_pretrained: dict[str, Any]) -> None:
    pretrained, _ = load_model(tiny_pretrained["model"])
    backbone = {k: v.clone() for k, v in pretrained.backbone.state_dict().items()}
    old_head = pretrained.head[1].weight.clone()
    model = transferred_model(pretrained, seed=1)
    assert all(torch.equal(backbone[k], v) for k, v in model.backbone.state_dict().items())
    assert not torch.equal(model.head[1].weight, old_head)


def test_backbone_lr_scale_zero_freezes_the_backbone(tiny_pretrained: dict[str, Any]) -> None:
    model, _ = load_model(tiny_pretrained["model"])
    groups = param_groups(model, lr=0.01, backbone_lr_scale=0.0)
    assert len(groups) == 1 and not any(p.requires_grad for p in model.backbone.parameters())
    model, _ = load_model(tiny_pretrained["model"])
    groups = param_groups(model, lr=0.01, backbone_lr_scale=0.1)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.001)]


def test_reports_transfer_scratch_and_gain(tiny_params: Params, tiny_data: dict[str, Path],
                                           tiny_transferred: dict[str, Any]) -> None:
    metrics = tiny_transferred["metrics"]
    assert metrics["gain_points"] == round(100 * (metrics["transfer_accuracy"] - metrics["scratch_accuracy"]), 2)
    assert metrics["train_images"] == 10 * tiny_params.ingest.labels_per_class
    model, _ = load_model(tiny_transferred["model"])
    target, _ = load_dataset(tiny_data["target"], splits=("test",))
    rescored = evaluate(model, *target["test"].tensors(), device=torch.device("cpu"))
    assert rescored["accuracy"] == pytest.approx(metrics["transfer_accuracy"])


def test_history_holds_both_models_with_the_same_epochs(tiny_params: Params,
                                                        tiny_transferred: dict[str, Any]) -> None:
    history = pd.read_csv(tiny_transferred["history"])
    assert history["epoch"].tolist() == list(range(1, tiny_params.transfer.epochs + 1))
    for name in ("transfer", "scratch"):
        assert {f"{name}_train_loss", f"{name}_val_accuracy"} <= set(history.columns)
