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
