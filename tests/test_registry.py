"""The champion gate, on a real MLflow tracking store and Model Registry (SQLite)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from groundwork.tracking.registry import CHAMPION, decide, gate, logged_model_id


def test_decide_rules() -> None:
    assert decide(0.9, None, metric="accuracy", min_gain=0.01).promote
    assert decide(0.95, 0.90, metric="accuracy", min_gain=0.01).promote
    kept = decide(0.905, 0.90, metric="accuracy", min_gain=0.01)
    assert not kept.promote and "+0.0050 < 0.01" in kept.reason
    assert decide(0.90, 0.90, metric="accuracy", min_gain=0.0).promote, "a tie passes a zero minimum gain"
    assert "has no accuracy score" in decide(0.5, None, metric="accuracy", min_gain=0.0, champion_version="3").reason


@pytest.fixture
def registry(tracking_at: str) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_at)  # the global URI too: MLflow's registry resolves a models:/ source there
    client.create_registered_model("digits")
    return client, "digits"


def new_version(client: MlflowClient, name: str, scores: dict[str, float], digest: str = "target-1") -> str:
    """A version backed by a logged model carrying `scores` as model-linked metrics on the dataset `digest`."""
    experiment = client.get_experiment_by_name("Default").experiment_id
    run = client.create_run(experiment).info.run_id
    model = client.create_logged_model(experiment, name="candidate", source_run_id=run)
    for key, value in scores.items():
        client.log_metric(run, key, value, model_id=model.model_id, dataset_name="target", dataset_digest=digest)
    return str(client.create_model_version(name, source=f"models:/{model.model_id}", run_id=run).version)


def test_gate_reads_the_champions_model_linked_score(registry: tuple[MlflowClient, str]) -> None:
    client, name = registry
    first = new_version(client, name, {"accuracy": 0.95})
    assert gate(client, name, first, {"accuracy": 0.95}, metric="accuracy", min_gain=0.0).promote
    assert str(client.get_registered_model(name).aliases[CHAMPION]) == first

    worse = new_version(client, name, {"accuracy": 0.93})
    decision = gate(client, name, worse, {"accuracy": 0.93}, metric="accuracy", min_gain=0.0,
                    dataset_digest="target-1")
    assert not decision.promote and decision.champion == 0.95 and decision.champion_version == first
    assert str(client.get_registered_model(name).aliases[CHAMPION]) == first
    assert client.get_model_version(name, worse).tags["gate.decision"] == "kept champion"
    assert "accuracy" not in client.get_model_version(name, worse).tags  # scores live on the model, not in tags

    better = new_version(client, name, {"accuracy": 0.97})
    assert gate(client, name, better, {"accuracy": 0.97}, metric="accuracy", min_gain=0.01).promote
    assert str(client.get_registered_model(name).aliases[CHAMPION]) == better
    # the champion measured on two datasets: the candidate's dataset is the one compared
    model_id = logged_model_id(client.get_model_version(name, better))
    run = client.get_logged_model(model_id).source_run_id
    client.log_metric(run, "accuracy", 0.50, model_id=model_id, dataset_name="target", dataset_digest="target-2")
    assert gate(client, name, new_version(client, name, {"accuracy": 0.9}), {"accuracy": 0.9}, metric="accuracy",
                min_gain=0.0, dataset_digest="target-1").champion == 0.97
    assert gate(client, name, new_version(client, name, {"accuracy": 0.9}), {"accuracy": 0.9}, metric="accuracy",
                min_gain=0.0, dataset_digest="target-2").champion == 0.50
    # a champion without the gate's metric is replaced, and the reason says why
    decision = gate(client, name, new_version(client, name, {}), {"f1": 0.1}, metric="f1", min_gain=0.0)
    assert decision.promote and "has no f1 score" in decision.reason


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
    """evaluate scores each logged variant on its own model and registers the int8 candidate's, no copy;
    `models:/<name>@champion` then predicts in another process, from the model's own code."""
    import mlflow

    from groundwork.compression.export import MANIFEST
    from groundwork.compression.names import SERVED
    from groundwork.serving.package import log_served_model, served_contract
    from groundwork.tracking.runs import MlflowTracker
    from tasks import evaluate

    uri = tracking_at
    experiment = mlflow.create_experiment("gate", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):  # as compress logs its ONNX variants
        manifest = json.loads((tiny_compressed["dir"] / MANIFEST).read_text())
        model_ids = {name: log_served_model(MlflowTracker(mlflow), tiny_compressed["dir"] / manifest[name]["file"],
                                            name, served_contract(tiny_params.ingest.target)) for name in SERVED}
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
    assert "**Input**: images as a client has them" in card and "target data digest" in card
    assert "**Input**" in mlflow.MlflowClient().get_registered_model(name).description
    # the version is the model compress logged (no second copy), carrying its own scores and no other variant's
    client = mlflow.MlflowClient()
    version = client.get_model_version(name, "1")
    assert logged_model_id(version) == model_ids["int8"] == registry["model_id"]
    scores = {m.key: m for m in client.get_logged_model(model_ids["int8"]).metrics}
    assert scores["accuracy"].value == metrics["variants"]["int8"]["accuracy"]
    assert scores["accuracy"].dataset_name == "target" and scores["accuracy"].dataset_digest
    structured = client.get_logged_model(model_ids["structured_int8"]).metrics
    assert {m.key: m.value for m in structured}["accuracy"] == metrics["variants"]["structured_int8"]["accuracy"]
    # in a fresh process, through the registry alias, without the project's code on the path
    script = (f"import mlflow, numpy as np; mlflow.set_tracking_uri({uri!r}); "
              f"model = mlflow.pyfunc.load_model('models:/{name}@champion'); "
              "out = model.predict(np.zeros((3, 1, 28, 28), np.float32)); "
              "import groundwork, sys; print(groundwork.__file__, file=sys.stderr); "
              "print(list(out['class']), np.stack(out['probabilities']).sum(axis=1).round(6).tolist())")
    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    classes, sums = result.stdout.strip().splitlines()[-1].split("] [")
    assert len(classes.strip("[").split(",")) == 3 and sums.rstrip("]") == "1.0, 1.0, 1.0"
    assert "/artifacts/" in result.stderr.splitlines()[-1], "the model's own copy of the code, not the project's"
    assert np.isclose(registry["candidate_score"], metrics["variants"]["int8"]["accuracy"])
