"""The champion gate, on a real MLflow tracking store and Model Registry (SQLite)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from groundwork.tracking.registry import CHAMPION, decide, gate


def test_decide_rules() -> None:
    assert decide(0.9, None, metric="accuracy", min_gain=0.01).promote
    assert decide(0.95, 0.90, metric="accuracy", min_gain=0.01).promote
    kept = decide(0.905, 0.90, metric="accuracy", min_gain=0.01)
    assert not kept.promote and "+0.0050 < 0.01" in kept.reason
    assert decide(0.90, 0.90, metric="accuracy", min_gain=0.0).promote, "a tie passes a zero minimum gain"
    assert "has no accuracy score" in decide(0.5, None, metric="accuracy", min_gain=0.0, champion_version="3").reason


@pytest.fixture
def registry(tmp_path: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("digits")
    return client, "digits"


def new_version(client: MlflowClient, name: str) -> str:
    return str(client.create_model_version(name, source="file:///nowhere").version)


def test_gate_moves_the_alias_only_for_a_better_candidate(registry: tuple[MlflowClient, str]) -> None:
    client, name = registry
    first = new_version(client, name)
    assert gate(client, name, first, {"accuracy": 0.95}, metric="accuracy", min_gain=0.0).promote
    assert str(client.get_registered_model(name).aliases[CHAMPION]) == first

    worse = new_version(client, name)
    decision = gate(client, name, worse, {"accuracy": 0.93}, metric="accuracy", min_gain=0.0)
    assert not decision.promote and decision.champion == 0.95 and decision.champion_version == first
    assert str(client.get_registered_model(name).aliases[CHAMPION]) == first
    assert client.get_model_version(name, worse).tags["gate.decision"] == "kept champion"

    better = new_version(client, name)
    assert gate(client, name, better, {"accuracy": 0.97}, metric="accuracy", min_gain=0.01).promote
    assert str(client.get_registered_model(name).aliases[CHAMPION]) == better
    assert client.get_model_version(name, better).tags["accuracy"] == "0.97"


@pytest.fixture
def tracking_at(tmp_path: Path) -> Iterator[str]:
    """The MLflow client's global tracking URI set to a store in tmp_path, and unset afterwards: set_tracking_uri
    also exports MLFLOW_TRACKING_URI, which would send later tests' runs here."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.mark.subprocess
def test_champion_from_a_pipeline_run_loads_in_a_fresh_process(tmp_path: Path, tracking_at: str, tiny_params,
                                                               tiny_data, tiny_transferred, tiny_compressed) -> None:
    """evaluate registers the int8 candidate; `models:/<name>@champion` then predicts in another process."""
    import mlflow

    from groundwork.tracking.runs import MlflowTracker
    from tasks import evaluate

    uri = tracking_at
    experiment = mlflow.create_experiment("gate", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        metrics = evaluate.run(tiny_params, transferred=tiny_transferred["model"], compressed=tiny_compressed["dir"],
                               target=tiny_data["target"], table_out=tmp_path / "e.csv",
                               confusion_out=tmp_path / "c.png", pareto_out=tmp_path / "pareto.png",
                               predictions_dir=tmp_path / "p",
                               tracker=MlflowTracker(mlflow))
    registry = metrics["registry"]
    assert registry["promoted"] and registry["version"] == 1 and registry["variant"] == "int8"
    name = tiny_params.evaluate.registered_model
    # the cards: the version's (every variant's scores, this one marked, the gate's reason) and the model's
    card = mlflow.MlflowClient().get_model_version(name, "1").description
    assert "**int8** (this version)" in card and f"**Gate**: promoted to `champion`. {registry['reason']}" in card
    assert all(f"| {variant} |" in card for variant in metrics["variants"] if variant != "int8")
    assert "**Input**: float32 images, shape (N, 1, 28, 28)" in card and "target data digest" in card
    assert "**Input**" in mlflow.MlflowClient().get_registered_model(name).description
    script = (f"import mlflow, numpy as np; mlflow.set_tracking_uri({uri!r}); "
              f"model = mlflow.pyfunc.load_model('models:/{name}@champion'); "
              "out = model.predict(np.zeros((3, 1, 28, 28), np.float32)); "
              "print(np.asarray(list(out.values())[0] if isinstance(out, dict) else out).shape)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "(3, 10)"
    assert np.isclose(registry["candidate_score"], metrics["variants"]["int8"]["accuracy"])
