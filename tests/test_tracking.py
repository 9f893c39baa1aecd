"""What a stage's MLflow run records beyond its params and metrics, on a real tracking store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from groundwork.params import TrackingParams
from groundwork.tracking.runs import stage_run


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A store in tmp_path for stage_run (which sets MLflow's global URI: unset again afterwards)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    mlflow.set_tracking_uri(None)


def test_system_metrics_are_sampled_only_when_the_params_ask(store: str) -> None:
    runs = {}
    for wanted in (True, False):
        with stage_run("pretrain", {}, TrackingParams(system_metrics=wanted, system_metrics_interval=0.2)):
            time.sleep(1.5)  # a few sampling intervals of work
            runs[wanted] = mlflow.active_run().info.run_id
    recorded = {wanted: set(MlflowClient(store).get_run(run_id).data.metrics) for wanted, run_id in runs.items()}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= recorded[True]
    assert not {name for name in recorded[False] if name.startswith("system/")}


def test_mlflow_experiment_name_chooses_the_experiment_of_the_flow_and_its_stages(
        store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.parent_run import start_parent_run
    from groundwork.tracking.runs import DEFAULT_EXPERIMENT, PARENT_RUN_ENV

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team-digits")
    parent = start_parent_run(run_name="pipeline · named", tags={}, root=tmp_path)
    monkeypatch.setenv(PARENT_RUN_ENV, parent)
    with stage_run("pretrain", {}):
        stage = mlflow.active_run().info.run_id
    client = MlflowClient(store)
    chosen = client.get_experiment_by_name("team-digits")
    assert chosen is not None and client.get_experiment_by_name(DEFAULT_EXPERIMENT) is None
    assert {run.info.run_id for run in client.search_runs([chosen.experiment_id])} == {parent, stage}
    assert client.get_run(stage).data.tags["mlflow.parentRunId"] == parent


def test_a_logged_torch_model_takes_any_batch_and_logging_it_warns_nothing(store: str,
                                                                            capfd: pytest.CaptureFixture[str]) -> None:
    """The input example is two images: with one, torch.export fixed the batch at 1 (and said so on stderr)."""
    import numpy as np
    import torch

    from groundwork.data.datasets import Split, example_input
    from groundwork.models.digitnet import DigitNet
    from groundwork.params import parse_params
    from groundwork.project import tiny_params_dict

    split = Split(np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.int64))
    with stage_run("pretrain", {}) as tracker:
        tracker.log_torch_model(DigitNet(parse_params(tiny_params_dict()).model), "pretrained", example_input(split))
        model_id = mlflow.last_logged_model().model_id
    assert "specialized" not in capfd.readouterr().err
    loaded = mlflow.pytorch.load_model(f"models:/{model_id}")
    assert loaded(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
