"""pretrain and the checkpoint format: per-epoch history, a self-describing checkpoint, safe loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from groundwork.data.datasets import Split, load_dataset, save_dataset
from groundwork.errors import CheckpointError
from groundwork.models.checkpoint import FORMAT, load_model, read_checkpoint
from groundwork.params import Params, parse_params
from groundwork.project import tiny_params_dict
from groundwork.training.contrastive import nt_xent
from groundwork.training.loop import loss_and_accuracy
from tasks import pretrain


def test_history_has_one_row_per_epoch(tiny_params: Params, tiny_pretrained: dict[str, Any]) -> None:
    history = pd.read_csv(tiny_pretrained["history"])
    assert history["epoch"].tolist() == list(range(1, tiny_params.pretrain.epochs + 1))
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"} <= set(history.columns)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


def test_metrics_are_scores_of_the_saved_model(tiny_data: dict[str, Path], tiny_pretrained: dict[str, Any]) -> None:
    metrics = tiny_pretrained["metrics"]
    model, payload = load_model(tiny_pretrained["model"])
    source, _ = load_dataset(tiny_data["source"], splits=("test",))
    rescored = loss_and_accuracy(model, *source["test"].tensors(), device=torch.device("cpu"))
    assert rescored["accuracy"] == pytest.approx(metrics["source_test_accuracy"])
    assert payload["metrics"] == metrics
    assert metrics["source_test_accuracy"] > 0.2, "beats chance (0.1) even after two tiny epochs"


def test_checkpoint_describes_itself(tiny_params: Params, tiny_pretrained: dict[str, Any]) -> None:
    payload = read_checkpoint(tiny_pretrained["model"])
    assert payload["format"] == FORMAT and payload["stage"] == "pretrain"
    assert payload["arch"]["channels"] == list(tiny_params.model.channels)
    assert payload["params"]["pretrain"]["optimizer"] == tiny_params.pretrain.optimizer
    model, _ = load_model(tiny_pretrained["model"])
    assert model.arch == tiny_params.model
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


class Payload:
    """Anything that needs code to unpickle: what weights_only loading must refuse."""

    def __reduce__(self) -> tuple:
        return (print, ("this would run on load",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": FORMAT, "state_dict": {}, "extra": Payload()}, crafted, pickle_protocol=2)
    with pytest.raises(CheckpointError, match=r"crafted\.pt: refused"):
        read_checkpoint(crafted)


def test_foreign_truncated_and_missing_checkpoints_are_named(tmp_path: Path,
                                                             tiny_pretrained: dict[str, Any]) -> None:
    with pytest.raises(CheckpointError, match=r"none\.pt: checkpoint not found"):
        read_checkpoint(tmp_path / "none.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_pretrained["model"].read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: corrupt"):
        read_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match=f"foreign.pt: not a {FORMAT}"):
        read_checkpoint(foreign)


def test_nt_xent_rewards_matching_views() -> None:
    first = torch.eye(8)[:4] * 5
    matched, found = nt_xent(first, first.clone(), temperature=0.5)
    shuffled, _ = nt_xent(first, first[[1, 2, 3, 0]], temperature=0.5)
    assert found == 4 and matched < shuffled


def test_contrastive_pretraining_is_label_free_and_probed(tmp_path: Path, tiny_data: dict[str, Path]) -> None:
    params = parse_params(tiny_params_dict(pretrain={"objective": "contrastive", "augmentation": "none",
                                                     "epochs": 1, "probe_epochs": 1}))
    source, _ = load_dataset(tiny_data["source"])
    scrambled = tmp_path / "scrambled.npz"  # labels shuffled: a label-free objective cannot notice
    save_dataset(scrambled, {name: Split(split.images, np.random.default_rng(0).permutation(split.labels))
                             if name == "train" else split for name, split in source.items()})
    metrics = pretrain.run(params, train=tmp_path / "unused.npz", source=tiny_data["source"],
                           model_out=tmp_path / "a.pt", history_out=tmp_path / "a.csv")
    pretrain.run(params, train=tmp_path / "unused.npz", source=scrambled, model_out=tmp_path / "b.pt",
                 history_out=tmp_path / "b.csv")
    assert metrics["objective"] == "contrastive"
    probed, _ = load_model(tmp_path / "a.pt")  # the probe's score is the saved model's on the source test split
    test = source["test"].tensors()
    assert metrics["linear_probe_accuracy"] == pytest.approx(
        loss_and_accuracy(probed, *test, device=torch.device("cpu"))["accuracy"])
    history = pd.read_csv(tmp_path / "a.csv")
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(history.columns)
    pd.testing.assert_frame_equal(history, pd.read_csv(tmp_path / "b.csv"))  # the labels played no part
    model, _ = load_model(tmp_path / "a.pt")
    assert all(p.requires_grad for p in model.parameters())
