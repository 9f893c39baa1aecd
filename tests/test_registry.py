"""The champion gate, on a real MLflow tracking store and Model Registry (SQLite)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

from groundwork.params import Params
from groundwork.project import tiny_params_dict
from groundwork.tracking.registry import CHAMPION, decide, gate, logged_model_id
from tests.helpers import free_port, stop_server, wait_until_healthy


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


@dataclass(frozen=True)
class Registered:
    project: Path  # holds params.yaml and the store, mlflow.db: what `groundwork serve` reads
    uri: str
    metrics: dict[str, Any]  # evaluate's
    model_ids: dict[str, str]  # variant -> the served model logged as compress logs it


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params, tiny_data: dict[str, Path],
               tiny_transferred: dict[str, Any], tiny_compressed: dict[str, Any]) -> Registered:
    """Every ONNX variant logged as compress logs it, then evaluate scoring them and registering its candidate,
    in a store of its own: a champion, as a pipeline run leaves it."""
    import mlflow

    from groundwork.compression.export import MANIFEST
    from groundwork.compression.names import SERVED
    from groundwork.serving.package import log_served_model, served_contract
    from groundwork.tracking.runs import MlflowTracker
    from tasks import evaluate

    project = tmp_path_factory.mktemp("registered")
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict()))
    uri = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("gate", artifact_location=(project / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):  # as compress logs its ONNX variants
            manifest = json.loads((tiny_compressed["dir"] / MANIFEST).read_text())
            model_ids = {name: log_served_model(MlflowTracker(mlflow), tiny_compressed["dir"] / manifest[name]["file"],
                                                name, served_contract(tiny_params.ingest.target)) for name in SERVED}
        with mlflow.start_run(experiment_id=experiment):
            metrics = evaluate.run(tiny_params, transferred=tiny_transferred["model"],
                                   compressed=tiny_compressed["dir"], target=tiny_data["target"],
                                   table_out=project / "e.csv", confusion_out=project / "c.png",
                                   pareto_out=project / "pareto.png", predictions_dir=project / "p",
                                   tracker=MlflowTracker(mlflow))
    finally:
        mlflow.set_tracking_uri(None)  # set_tracking_uri exports MLFLOW_TRACKING_URI: later tests must not see it
    return Registered(project, uri, metrics, model_ids)


@pytest.mark.subprocess
def test_champion_from_a_pipeline_run_loads_in_a_fresh_process(registered: Registered, tiny_params: Params) -> None:
    """evaluate scores each logged variant on its own model and registers the int8 candidate's, no copy;
    `models:/<name>@champion` then predicts in another process, from the model's own code."""
    from mlflow import MlflowClient

    metrics, model_ids = registered.metrics, registered.model_ids
    registry = metrics["registry"]
    assert registry["promoted"] and registry["version"] == 1 and registry["variant"] == "int8"
    name = tiny_params.evaluate.registered_model
    client = MlflowClient(registered.uri)
    # the cards: the version's (every variant's scores, this one marked, the gate's reason) and the model's
    card = client.get_model_version(name, "1").description
    assert "**int8** (this version)" in card and f"**Gate**: promoted to `champion`. {registry['reason']}" in card
    assert all(f"| {variant} |" in card for variant in metrics["variants"] if variant != "int8")
    assert "**Input**: images as a client has them" in card and "target data digest" in card
    assert "**Input**" in client.get_registered_model(name).description
    # the version is the model compress logged (no second copy), carrying its own scores and no other variant's
    version = client.get_model_version(name, "1")
    assert logged_model_id(version) == model_ids["int8"] == registry["model_id"]
    scores = {m.key: m for m in client.get_logged_model(model_ids["int8"]).metrics}
    assert scores["accuracy"].value == metrics["variants"]["int8"]["accuracy"]
    assert scores["accuracy"].dataset_name == "target" and scores["accuracy"].dataset_digest
    structured = client.get_logged_model(model_ids["structured_int8"]).metrics
    assert {m.key: m.value for m in structured}["accuracy"] == metrics["variants"]["structured_int8"]["accuracy"]
    # in a fresh process, through the registry alias, without the project's code on the path
    script = (f"import mlflow, numpy as np; mlflow.set_tracking_uri({registered.uri!r}); "
              f"model = mlflow.pyfunc.load_model('models:/{name}@champion'); "
              "out = model.predict(np.zeros((3, 1, 28, 28), np.float32)); "
              "import groundwork, sys; print(groundwork.__file__, file=sys.stderr); "
              "print(list(out['class']), np.stack(out['probabilities']).sum(axis=1).round(6).tolist())")
    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True,
                            cwd=registered.project)
    assert result.returncode == 0, result.stderr[-2000:]
    classes, sums = result.stdout.strip().splitlines()[-1].split("] [")
    assert len(classes.strip("[").split(",")) == 3 and sums.rstrip("]") == "1.0, 1.0, 1.0"
    assert "/artifacts/" in result.stderr.splitlines()[-1], "the model's own copy of the code, not the project's"
    assert np.isclose(registry["candidate_score"], metrics["variants"]["int8"]["accuracy"])


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _as_photo(image: np.ndarray) -> str:
    """A digit as a client would photograph it: dark ink on white, 64x64, a PNG file in base64."""
    from PIL import Image

    photo = Image.fromarray(255 - image).resize((64, 64), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.server
def test_the_champion_served_over_http_answers_as_it_does_in_process(registered: Registered, tiny_params: Params,
                                                                     tiny_data: dict[str, Path],
                                                                     tiny_compressed: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    """`groundwork serve` starts MLflow's scoring server on the champion; real HTTP requests (a JSON array of
    images, encoded PNGs of digits, a table of them) get each image's class and probabilities, as the same model
    loaded in this process answers them; bad requests get a 400 with the reason, and the server keeps serving."""
    import mlflow

    from groundwork.compression.export import onnx_logits, onnx_session

    with np.load(tiny_data["target"]) as stored:
        images = stored["test_images"][:32]
    photos = [_as_photo(image) for image in images[:8]]
    mlflow.set_tracking_uri(registered.uri)
    try:
        in_process = mlflow.pyfunc.load_model(f"models:/{tiny_params.evaluate.registered_model}@champion")
        expected, expected_photos = in_process.predict(images), in_process.predict(photos)
    finally:
        mlflow.set_tracking_uri(None)
    # the served model prepares 28x28 uint8 images exactly as the training data: the ONNX file's own answer
    session = onnx_session(tiny_compressed["dir"] / "int8.onnx")
    assert list(expected["class"]) == onnx_logits(session, torch.from_numpy(images)).argmax(1).tolist()

    url, log = f"http://127.0.0.1:{free_port()}", tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen([str(Path(sys.executable).parent / "groundwork"), "serve", "--project-dir",
                                    str(registered.project), "--port", url.rsplit(":", 1)[1]], stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_healthy(process, url, log)
        status, answer = _post(url, {"inputs": images.tolist()})
        assert status == 200, answer
        served = answer["predictions"]
        assert [row["class"] for row in served] == list(expected["class"])
        assert np.allclose([row["probabilities"] for row in served], np.stack(expected["probabilities"]), atol=1e-6)
        for body in ({"inputs": photos}, {"dataframe_split": {"columns": ["image"], "data": [[p] for p in photos]}}):
            status, answer = _post(url, body)
            assert status == 200, answer
            assert [row["class"] for row in answer["predictions"]] == list(expected_photos["class"])
        for body, reason in (({"inputs": []}, "no images in the request"),
                             ({"inputs": [[["a", "b"]]]}, "image 0: not an array of numbers nor a base64-encoded file"),
                             ({"inputs": [base64.b64encode(b"GIF89a, not quite").decode()]}, "not a readable image"),
                             ({"inputs": ["not base64!"]}, "must be a base64-encoded PNG or JPEG file")):
            status, answer = _post(url, body)
            assert status == 400 and reason in answer["message"], (status, answer)
        status, answer = _post(url, {"inputs": images[:2].tolist()})
        assert status == 200 and len(answer["predictions"]) == 2, "the server keeps serving after bad requests"
    finally:
        stop_server(process)
