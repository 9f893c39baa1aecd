"""The champion gate, on a real MLflow tracking store and Model Registry (SQLite)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import signal
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
from groundwork.tracking.registry import CHAMPION, LEARNT_FROM_TAG, logged_model_id
from tests.helpers import free_port, stop_server, wait_until_healthy


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


def evaluate_again(registered: Registered, params: Params, tiny_data: dict[str, Path], tiny_transferred: dict[str, Any],
                   tiny_compressed: dict[str, Any], folder: Path) -> dict[str, Any]:
    """evaluate run once more on the same files, into the registered store (the champion is version 1's)."""
    import mlflow

    from groundwork.tracking.runs import MlflowTracker
    from tasks import evaluate

    mlflow.set_tracking_uri(registered.uri)
    try:
        with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("gate").experiment_id):
            return evaluate.run(params, transferred=tiny_transferred["model"], compressed=tiny_compressed["dir"],
                                target=tiny_data["target"], table_out=folder / "e.csv", confusion_out=folder / "c.png",
                                pareto_out=folder / "pareto.png", predictions_dir=folder / "p",
                                tracker=MlflowTracker(mlflow))
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.subprocess
def test_champion_from_a_pipeline_run_loads_in_a_fresh_process(registered: Registered, tiny_params: Params) -> None:
    """evaluate scores each logged variant on its own model and registers the one its rule chose, no copy, with the
    rule and the images it learnt from; `models:/<name>@champion` then predicts in another process, from the
    model's own code."""
    metrics, model_ids = registered.metrics, registered.model_ids
    registry = metrics["registry"]
    chosen = metrics["selection"]["chosen"]
    assert registry["promoted"] and registry["version"] == 1 and registry["variant"] == chosen
    name = tiny_params.evaluate.registered_model
    client = MlflowClient(registered.uri)
    # the cards: the version's (every variant's scores, this one marked, the rule, the gate's reason) and the model's
    card = client.get_model_version(name, "1").description
    assert f"**{chosen}** (this version)" in card and f"**Gate**: promoted to `champion`. {registry['reason']}" in card
    rows = {line.split("|")[1].strip(): line for line in card.splitlines() if line.startswith("| ")}
    assert set(metrics["variants"]) - {chosen} < set(rows), "a row per variant"
    for variant, scores in metrics["variants"].items():  # rounded alike: percentages to two decimals, sizes in KiB
        row = rows[f"**{variant}** (this version)" if variant == chosen else variant]
        assert f" {100 * scores['accuracy']:.2f}% [" in row and f"{scores['bytes'] / 1024:,.1f} KiB" in row
    assert "no inputs: with one, MLflow would refuse every request" in card
    assert f"**Selection**: {metrics['selection']['rule']}" in card
    assert "**Input**: images as a client has them" in card and "target data digest" in card
    assert "**Input**" in client.get_registered_model(name).description
    # the version is the model compress logged (no second copy), carrying its own scores and no other variant's
    version = client.get_model_version(name, "1")
    assert logged_model_id(version) == model_ids[chosen] == registry["model_id"]
    assert version.tags["selection.variant"] == chosen and version.tags[LEARNT_FROM_TAG].startswith("runs:/")
    scores = {m.key: m for m in client.get_logged_model(model_ids[chosen]).metrics}
    assert scores["accuracy"].value == metrics["variants"][chosen]["accuracy"]
    assert scores["vs_fp32_p_value"].value == metrics["variants"][chosen]["vs_fp32_p_value"]
    assert scores["accuracy"].dataset_name == "target" and scores["accuracy"].dataset_digest
    other = next(variant for variant in model_ids if variant != chosen)
    assert {m.key: m.value for m in client.get_logged_model(model_ids[other]).metrics}["accuracy"] \
        == metrics["variants"][other]["accuracy"]
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
    assert np.isclose(registry["candidate_score"], metrics["variants"][chosen]["accuracy"])


def test_the_same_model_again_is_a_tie_and_the_champion_stays(registered: Registered, tiny_params: Params,
                                                                tiny_data: dict[str, Path],
                                                                tiny_transferred: dict[str, Any],
                                                                tiny_compressed: dict[str, Any],
                                                                tmp_path: Path) -> None:
    """evaluate again on the same files, naming version 1's variant and judging on file size: the champion is
    loaded from the registry and scored on the test images it did not learn from (all of them: same split), the
    two agree on every image and neither file is smaller, so the alias stays; the test and its numbers are
    recorded on the new version. Then a champion said to have learnt from half the test images is scored on the
    other half only."""
    chosen = registered.metrics["selection"]["chosen"]
    params = tiny_params.model_copy(update={"evaluate": tiny_params.evaluate.model_copy(update={
        "selection": tiny_params.evaluate.selection.model_copy(update={"variant": chosen, "objective": "size"})})})
    again = evaluate_again(registered, params, tiny_data, tiny_transferred, tiny_compressed, tmp_path / "a")
    registry = again["registry"]
    assert registry["registered"] and not registry["promoted"] and registry["champion_version"] == "1"
    evidence = registry["evidence"]
    assert evidence["test"] == "exact McNemar" and evidence["losses"] == evidence["wins"] == "0"
    assert int(evidence["images"]) == again["test_images"] and evidence["p_value"] == "1"
    assert "not better on size" in registry["reason"]
    name = tiny_params.evaluate.registered_model
    client = MlflowClient(registered.uri)
    assert str(client.get_registered_model(name).aliases[CHAMPION]) == "1"
    tags = client.get_model_version(name, str(registry["version"])).tags
    assert tags["gate.decision"] == "kept champion" and tags["gate.p_value"] == "1" and tags["gate.margin_points"]

    # version 1 now says it learnt from half of this run's test images: the gate scores the other half only
    import mlflow

    from groundwork.data.datasets import load_dataset
    from groundwork.evaluation.champion import image_ids

    test_ids = image_ids(load_dataset(tiny_data["target"], splits=("test",))[0]["test"].images)
    seen = sorted(set(test_ids[: len(test_ids) // 2]))
    mlflow.set_tracking_uri(registered.uri)
    try:
        with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("gate").experiment_id) as run:
            mlflow.log_text("\n".join(seen), "learnt.txt")
        client.set_model_version_tag(name, "1", LEARNT_FROM_TAG, f"runs:/{run.info.run_id}/learnt.txt")
    finally:
        mlflow.set_tracking_uri(None)
    half = evaluate_again(registered, params, tiny_data, tiny_transferred, tiny_compressed, tmp_path / "b")
    unseen = sum(image_id not in set(seen) for image_id in test_ids)
    assert int(half["registry"]["evidence"]["images"]) == unseen < len(test_ids)


def test_a_champion_that_cannot_be_opened_stays_and_the_stage_says_why(registered: Registered, tiny_params: Params,
                                                                        tiny_data: dict[str, Path],
                                                                        tiny_transferred: dict[str, Any],
                                                                        tiny_compressed: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    """The champion's ONNX file damaged in the artifact store: evaluate still scores and registers its own
    choice, the gate keeps the champion (it cannot compare), and the reason names the failure."""
    name = tiny_params.evaluate.registered_model
    client = MlflowClient(registered.uri)
    champion = client.get_model_version_by_alias(name, CHAMPION)
    model_id = logged_model_id(champion)
    stored = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    files = sorted(stored.rglob("*.onnx"))
    assert files, f"no ONNX file under {stored}"
    original = files[0].read_bytes()
    files[0].write_bytes(b"not an onnx file")
    try:
        again = evaluate_again(registered, tiny_params, tiny_data, tiny_transferred, tiny_compressed, tmp_path)
    finally:
        files[0].write_bytes(original)
    registry = again["registry"]
    assert registry["registered"] and not registry["promoted"]
    assert "could not be opened" in registry["reason"] and f"version {champion.version}" in registry["reason"]
    assert str(client.get_registered_model(name).aliases[CHAMPION]) == str(champion.version)


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
    loaded in this process answers them; bad requests get a 400 with the reason, and the server keeps serving.
    SIGTERM then stops it, every process of it."""
    import mlflow

    from groundwork.compression.export import onnx_logits, onnx_session

    with np.load(tiny_data["target"]) as stored:
        images = stored["test_images"][:32]
    photos = [_as_photo(image) for image in images[:8]]
    mlflow.set_tracking_uri(registered.uri)
    # loading puts the model's copy of the served code first on sys.path and drops the project's modules of the
    # same names from sys.modules: both restored after, or later tests' spawned workers import the copy
    path, modules = list(sys.path), dict(sys.modules)
    try:
        in_process = mlflow.pyfunc.load_model(f"models:/{tiny_params.evaluate.registered_model}@champion")
        expected, expected_photos = in_process.predict(images), in_process.predict(photos)
    finally:
        mlflow.set_tracking_uri(None)
        sys.path[:] = path
        for name in [name for name in sys.modules if name.startswith("groundwork") and name not in modules]:
            del sys.modules[name]
        sys.modules.update(modules)
    # the served model prepares 28x28 uint8 images exactly as the training data: the ONNX file's own answer
    chosen = registered.metrics["selection"]["chosen"]
    session = onnx_session(tiny_compressed["dir"] / json.loads((tiny_compressed["dir"] / "variants.json").read_text())[
        chosen]["file"])
    assert list(expected["class"]) == onnx_logits(session, torch.from_numpy(images)).argmax(1).tolist()

    url, log = f"http://127.0.0.1:{free_port()}", tmp_path / "serve.log"
    # with the capture on (adaptive.capture), a batch of 32 images: the first request fills one
    params_file, incoming = registered.project / "params.yaml", registered.project / "data" / "incoming"
    kept = params_file.read_text()
    params_file.write_text(yaml.safe_dump(tiny_params_dict(adaptive={"capture": {"enabled": True, "batch_size": 32}})))
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
        [captured] = incoming.glob("served-*.npz")  # what it was asked, as the model took it, and its answers
        with np.load(captured) as batch:
            assert np.array_equal(batch["images"], images) and batch["predicted"].tolist() == list(expected["class"])
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
        assert len(list(incoming.iterdir())) == 1, "18 images since: no second batch yet, nothing half-written"
        assert_the_signal_stops_the_whole_tree(process, int(url.rsplit(":", 1)[1]), signal.SIGTERM)
    finally:
        stop_server(process)
        params_file.write_text(kept)
        shutil.rmtree(incoming, ignore_errors=True)


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_variant_fails_evaluate_naming_it_and_registers_nothing(registered: Registered, tiny_params: Params,
                                                                          tiny_data: dict[str, Path],
                                                                          tiny_transferred: dict[str, Any],
                                                                          tiny_compressed: dict[str, Any],
                                                                          tmp_path: Path, damage: str) -> None:
    import shutil

    from groundwork.errors import DataError

    copy = shutil.copytree(tiny_compressed["dir"], tmp_path / "compressed")
    victim = copy / "structured_int8.onnx"
    if damage == "missing":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[:200])
    name = tiny_params.evaluate.registered_model
    client = MlflowClient(registered.uri)
    versions = len(client.search_model_versions(f"name = '{name}'"))
    champion = str(client.get_registered_model(name).aliases[CHAMPION])
    with pytest.raises(DataError, match=r"structured_int8\.onnx: variant 'structured_int8'"):
        evaluate_again(registered, tiny_params, tiny_data, tiny_transferred, {"dir": copy}, tmp_path / "out")
    assert len(client.search_model_versions(f"name = '{name}'")) == versions
    assert str(client.get_registered_model(name).aliases[CHAMPION]) == champion


@pytest.mark.subprocess
def test_rollback_gives_the_champion_back_to_the_version_before_and_refuses_past_the_first(
        registered: Registered, tiny_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`groundwork rollback` on a copy of the store: a version the gate promotes records the champion it replaced;
    rolling back gives the alias back to that version, with the reason and the time on both; rolling back past
    the first champion exits 2 with one line and moves nothing."""
    import shutil

    from groundwork.tracking.registry import PREVIOUS_CHAMPION_TAG, GateDecision, apply_gate

    project = shutil.copytree(registered.project, tmp_path / "project")
    store = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # the registry looks a version's logged model up in it
    client = MlflowClient(store)
    name = tiny_params.evaluate.registered_model
    first = client.get_model_version_by_alias(name, CHAMPION)
    assert str(first.version) == "1", "the fixture's champion is its first version"
    second = client.create_model_version(name, first.source, model_id=logged_model_id(first))
    second_version = str(second.version)
    apply_gate(client, name, second_version, GateDecision(promote=True, reason="more accurate", metric="accuracy",
                                                          candidate=0.9, champion=0.8, champion_version="1"))
    promoted = client.get_model_version(name, second_version)
    assert promoted.aliases == [CHAMPION] and promoted.tags[PREVIOUS_CHAMPION_TAG] == "1" and promoted.tags["gate.time"]
    card = client.get_model_version(name, "1").description
    assert "promoted to `champion`" in card, "the card still says what its gate decided"
    assert card.endswith(f"was `champion` until version {second_version} took the alias."), card[-200:]

    back = subprocess.run([str(Path(sys.executable).parent / "groundwork"), "rollback", "--project-dir", str(project),
                           "--reason", "slower in production"], capture_output=True, text=True, timeout=120)
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == (f"{name}: champion is version 1 again (was version {second_version}); "
                                   "reason: slower in production")
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    replaced, restored = client.get_model_version(name, second_version).tags, client.get_model_version(name, "1").tags
    assert client.get_model_version(name, second_version).description.endswith(
        "was `champion` until rolled back to version 1: slower in production.")
    assert client.get_model_version(name, "1").description.endswith(
        f"`champion` again, taken back from version {second_version}: slower in production.")
    assert replaced["rollback.decision"] == "champion given back to version 1"
    assert restored["rollback.decision"] == f"champion again, taken back from version {second_version}"
    assert replaced["rollback.reason"] == restored["rollback.reason"] == "slower in production"
    assert replaced["rollback.time"] == restored["rollback.time"] and replaced["rollback.time"].endswith("+00:00")

    again = subprocess.run([str(Path(sys.executable).parent / "groundwork"), "rollback", "--project-dir", str(project),
                            "--reason", "once more"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.strip().splitlines() == [
        f"groundwork rollback: {name} version 1 is its first champion: no earlier version held the alias "
        f"(in sqlite:///{project.resolve() / 'mlflow.db'})"]
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    assert client.get_model_version(name, "1").tags["rollback.reason"] == "slower in production", "nothing moved"


def assert_the_signal_stops_the_whole_tree(process: subprocess.Popen[bytes], port: int, signum: int) -> None:
    """As systemd, Docker or Kubernetes stop a service (SIGTERM), or Ctrl-C (SIGINT), to the command's own process,
    not its group: the command has handed over to groundwork.supervise (same process id, neither numpy nor torch
    loaded), and the server's whole tree ends with it, leaving the port free."""
    import socket
    import time

    import psutil

    launcher = psutil.Process(process.pid)
    tree = [launcher, *launcher.children(recursive=True)]
    assert launcher.cmdline()[1:4] == ["-m", "groundwork.supervise", "--"], launcher.cmdline()
    heavy = [mapped.path for mapped in launcher.memory_maps() if "/numpy" in mapped.path or "/torch" in mapped.path]
    assert heavy == [], f"the process left waiting still holds {heavy[:3]}"
    assert len(tree) >= 3, f"the supervisor, MLflow's command and its server: {[p.cmdline()[:4] for p in tree]}"
    signalled = time.monotonic()
    process.send_signal(signum)
    assert process.wait(timeout=60) == 128 + signum
    _, alive = psutil.wait_procs(tree, timeout=30)
    print(f"{launcher.pid}: every process gone {time.monotonic() - signalled:.1f} s after {signum!r}")
    assert alive == [], f"left running: {[p.cmdline()[:4] for p in alive]}"
    with socket.socket() as probe:  # as a restarted server binds: allowed beside closed connections, not a listener
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()


@pytest.mark.server
def test_ctrl_c_to_groundwork_ui_stops_every_server_process_and_frees_the_port(registered: Registered,
                                                                              tmp_path: Path) -> None:
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "ui.log"
    with log.open("wb") as output:
        process = subprocess.Popen([str(Path(sys.executable).parent / "groundwork"), "ui", "--project-dir",
                                    str(registered.project), "--port", str(port)], stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_healthy(process, url, log)
        assert_the_signal_stops_the_whole_tree(process, port, signal.SIGINT)
    finally:
        stop_server(process)


def test_the_champion_pointer_follows_the_alias_with_the_weights_form_and_labels_each_version_recorded(
        registered: Registered, tiny_params: Params, tiny_compressed: dict[str, Any], tmp_path: Path) -> None:
    """The adaptive loop's pointer (groundwork.adaptive.champion) on a copy of the store: the pipeline's version
    records the fp32 weights behind its chosen variant, in that variant's form, with no loop labels learnt; a
    promoted version's own weights, form and labels follow the alias; a champion whose version records no weights
    is refused by name and leaves the pointer where it was."""
    import shutil

    import mlflow

    from groundwork.adaptive.champion import ChampionError, write_pointer
    from groundwork.tracking.registry import GateDecision, apply_gate
    from groundwork.tracking.registry_gate import MlflowRegistry

    project = shutil.copytree(registered.project, tmp_path / "project")
    store = f"sqlite:///{project / 'mlflow.db'}"
    name, folder = tiny_params.evaluate.registered_model, tmp_path / "champion"
    client = MlflowClient(store)
    first = client.get_model_version_by_alias(name, CHAMPION)
    mlflow.set_tracking_uri(store)
    try:
        registry = MlflowRegistry(mlflow)
        pointer = write_pointer(registry, name, folder)
        assert (pointer.version, pointer.form, pointer.labels) == ("1", registered.metrics["selection"]["chosen"],
                                                                   frozenset())
        promoted = GateDecision(promote=True, reason="more accurate", metric="accuracy", candidate=0.9, champion=0.8,
                                champion_version="1")
        second = str(client.create_model_version(name, first.source, model_id=logged_model_id(first)).version)
        with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("gate").experiment_id):
            registry.record_weights(name, second, tiny_compressed["dir"] / "pruned.pt", form="pruned",
                                    labels=["b2", "a1"])
        apply_gate(client, name, second, promoted)
        pointer = write_pointer(registry, name, folder)
        assert (pointer.version, pointer.form, pointer.labels) == (second, "pruned", frozenset({"a1", "b2"}))
        assert pointer.weights.read_bytes() == (tiny_compressed["dir"] / "pruned.pt").read_bytes()

        third = str(client.create_model_version(name, first.source, model_id=logged_model_id(first)).version)
        apply_gate(client, name, third, promoted)
        with pytest.raises(ChampionError, match=rf"version {third}: its version has no `fp32_weights`"):
            write_pointer(registry, name, folder)
    finally:
        mlflow.set_tracking_uri(None)  # set_tracking_uri exports MLFLOW_TRACKING_URI: later tests must not see it
    assert (folder / "champion.json").read_text().count(f'"version": "{second}"') == 1, "the pointer stayed"
