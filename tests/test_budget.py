"""budget: the label-budget sweep, its equal-steps rule, its table and curve."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from groundwork.params import Params
from groundwork.training.label_budget import budget_params, method_params, summarise, sweep
from groundwork.training.loop import steps_per_epoch
from tasks import budget


@pytest.mark.parametrize("images", [10, 50, 890])
def test_every_budget_gets_at_least_the_same_steps(tiny_params: Params, images: int) -> None:
    params = budget_params(tiny_params, images)
    steps = params.transfer.epochs * steps_per_epoch(images, params.transfer.batch_size)
    assert tiny_params.budget.steps <= steps < tiny_params.budget.steps + steps_per_epoch(images, 16)


def test_sweep_reports_mean_and_spread_per_budget(tmp_path: Path, tiny_params: Params, tiny_data: dict[str, Path],
                                                  tiny_pretrained: dict[str, Any]) -> None:
    table, curve = tmp_path / "budget.csv", tmp_path / "curve.png"
    metrics = budget.run(tiny_params, pretrained=tiny_pretrained["model"], target=tiny_data["target"],
                         table_out=table, curve_out=curve)
    summary = pd.read_csv(table)
    assert summary["budget"].astype(str).tolist() == ["1", "3"]
    assert summary["draws"].tolist() == [tiny_params.budget.draws] * 2
    assert set(metrics["budgets"]) == {"1", "3"}
    for method in ("scratch", "transfer", "semi_supervised"):
        assert metrics["budgets"]["3"][f"{method}_accuracy"] == pytest.approx(
            summary[f"{method}_accuracy_mean"].iloc[1])
    assert (summary["source_only_accuracy_mean"] == metrics["source_only_accuracy"]).all()
    assert (summary["source_only_accuracy_std"] == 0).all(), "the pretrained model does not depend on the draw"
    assert curve.read_bytes()[:4] == b"\x89PNG"


def test_draws_differ_and_the_whole_pool_is_drawn_once(tiny_params: Params, tiny_data: dict[str, Path],
                                                        tiny_pretrained: dict[str, Any],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from groundwork.data.datasets import load_dataset
    from groundwork.tracking.runs import NullTracker
    from groundwork.training import label_budget as module

    trained_on: list[set[bytes]] = []  # each draw's labelled images, as the draw's models received them

    def recorded(*args: Any, **kwargs: Any) -> Any:
        train = drawn(*args, **kwargs)
        trained_on.append({image.tobytes() for image in train.images})
        return train

    drawn = module.label_budget
    monkeypatch.setattr(module, "label_budget", recorded)
    data, _ = load_dataset(tiny_data["target"], splits=("pool", "val", "test"))
    params = tiny_params.model_copy(update={"budget": tiny_params.budget.model_copy(
        update={"labels_per_class": [2, None], "draws": 2, "workers": 1})})
    with caplog.at_level(logging.DEBUG):
        rows = sweep(tiny_pretrained["model"], data, params, NullTracker())
    assert rows["budget"].tolist() == ["2", "2", "all"]
    # the log: one line per draw; each epoch of its models is detail, at DEBUG
    logged = [(record.name, record.levelno, record.getMessage()) for record in caplog.records]
    draws = [message for name, level, message in logged if name == module.__name__ and level == logging.INFO
             and message.startswith("labels/class ") and "draw" in message]
    assert len(draws) == 3 and draws[0].startswith("labels/class 2, draw 1: source_only "), draws
    epochs = [(level, message) for name, level, message in logged if name == "groundwork.training.loop"]
    assert epochs and all(level == logging.DEBUG for level, _ in epochs), epochs[:3]
    assert any(" epoch 1/" in message for _, message in epochs)
    assert [len(images) for images in trained_on] == [20, 20, len(data["pool"])]
    assert trained_on[0] != trained_on[1], "the two draws of 2 labels per class trained on the same images"
    assert trained_on[2] == {image.tobytes() for image in data["pool"].images}
    assert rows.loc[rows["budget"] == "all", "train_images"].item() == len(data["pool"])
    # the table's spread is the draws' sample standard deviation (one draw: 0)
    spread = summarise(rows).set_index("budget")["transfer_accuracy_std"]
    two = rows.loc[rows["budget"] == "2", "transfer_accuracy"].to_numpy()
    assert spread["2"] == pytest.approx(np.std(two, ddof=1)) and spread["all"] == 0


@pytest.mark.subprocess
def test_draws_trained_in_two_processes_score_exactly_as_in_this_one(tiny_params: Params, tiny_data: dict[str, Path],
                                                                    tiny_pretrained: dict[str, Any]) -> None:
    from groundwork.data.datasets import load_dataset
    from groundwork.tracking.runs import NullTracker

    data, _ = load_dataset(tiny_data["target"], splits=("pool", "val", "test"))
    before = torch.get_num_threads()
    rows = {}
    try:
        for workers, threads in ((1, 1), (2, 2)):  # a thread per draw both times: the same arithmetic
            torch.set_num_threads(threads)
            section = tiny_params.budget.model_copy(update={"labels_per_class": [1], "workers": workers})
            params = tiny_params.model_copy(update={"budget": section})
            rows[workers] = sweep(tiny_pretrained["model"], data, params, NullTracker())
    finally:
        torch.set_num_threads(before)
    assert len(rows[2]) == tiny_params.budget.draws
    pd.testing.assert_frame_equal(rows[1], rows[2])


def test_methods_differ_only_in_semi_supervision(tiny_params: Params) -> None:
    semi = method_params(tiny_params, "semi_supervised").transfer
    plain = method_params(tiny_params, "transfer").transfer
    assert (semi.semi_supervised.method, plain.semi_supervised.method) == ("fixmatch", "none")
    assert semi.model_copy(update={"semi_supervised": plain.semi_supervised}) == plain


@pytest.mark.server
def test_a_two_worker_dask_cluster_scores_the_draws_exactly_as_this_process(
        tiny_params: Params, tiny_data: dict[str, Path], tiny_pretrained: dict[str, Any], dask_scheduler: str) -> None:
    """The sweep sent to a scheduler on localhost with two one-thread workers (`dask scheduler`, `dask worker`)
    gives the same table as the draws trained here one after the other on one thread."""
    import dask

    from groundwork.data.datasets import load_dataset
    from groundwork.tracking.runs import NullTracker

    data, _ = load_dataset(tiny_data["target"], splits=("pool", "val", "test"))
    section = tiny_params.budget.model_copy(update={"labels_per_class": [1], "workers": 1})
    params = tiny_params.model_copy(update={"budget": section})
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = sweep(tiny_pretrained["model"], data, params, NullTracker())
    finally:
        torch.set_num_threads(before)
    with dask.config.set({"scheduler-address": dask_scheduler}):
        on_the_cluster = sweep(tiny_pretrained["model"], data, params, NullTracker())
    assert len(here) == tiny_params.budget.draws
    pd.testing.assert_frame_equal(here, on_the_cluster)
