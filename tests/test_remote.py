"""Beyond one machine: the flow records to a real `mlflow server` (SQLite backend, artifacts served by the server),
pushes data and models to a DVC remote in a folder outside the project, and a fresh `git clone` restores them
with `dvc pull`. One flow run of the first stages, with tiny params, serves every test."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from flows.pipeline import pipeline
from flows.repro import RAN, PushFailed
from groundwork.project import ROOT, copy_project, tiny_params_dict
from groundwork.tracking.registry import CHAMPION
from tests.helpers import (
    TrackingServer,
    child_runs,
    dvc,
    flow_artifacts,
    item_runs,
    output_digests,
    parent_runs,
    start_tracking_server,
    statuses,
    stop_server,
    wait_until_healthy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.server]

GIT = ["git", "-c", "user.name=groundwork", "-c", "user.email=groundwork@localhost"]
# The flow runs whatever graph dvc.yaml holds; the first three stages write data and a model, which is all these
# tests need, in a fraction of the whole pipeline's time.
STAGES = ["ingest", "augment", "pretrain"]


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory,
                    request: pytest.FixtureRequest) -> Iterator[TrackingServer]:
    """A tracking server named by MLFLOW_TRACKING_URI, with the Prefect test server for the flows (started while
    the tracking server starts, when this process has none yet: both take seconds)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    process, server = start_tracking_server(folder)
    try:
        request.getfixturevalue("prefect_test_server")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", server.url)
            for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
                patch.delenv(name, raising=False)
            wait_until_healthy(process, server.url, folder / "server.log")
            yield server
    finally:
        stop_server(process)


@dataclass(frozen=True)
class PushedRun:
    project: Path
    remote: Path
    state: Any  # the flow run's final Prefect state


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory: pytest.TempPathFactory, tracking_server: TrackingServer) -> PushedRun:
    """The flow with push=True on a tiny project (its first stages) whose default DVC remote is a folder outside it."""
    project = copy_project(tmp_path_factory.mktemp("project"), tiny_params_dict())
    graph = yaml.safe_load((project / "dvc.yaml").read_text())
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {name: graph["stages"][name] for name in STAGES}}))
    remote = tmp_path_factory.mktemp("dvc-remote")
    dvc(project, "remote", "add", "-d", "storage", str(remote))
    subprocess.run([*GIT, "commit", "-qam", "first stages, DVC remote"], cwd=project, check=True)
    state = pipeline(project_dir=str(project), push=True, return_state=True)
    assert state.is_completed(), state
    return PushedRun(project=project, remote=remote, state=state)


def test_stages_record_runs_metrics_and_artifacts_on_the_server(tracking_server: TrackingServer,
                                                               pushed_run: PushedRun, tmp_path: Path) -> None:
    assert statuses(pushed_run.state.result()) == dict.fromkeys(STAGES, RAN)
    client = MlflowClient(tracking_server.url, registry_uri=tracking_server.url)
    [parent] = parent_runs(client)
    children = {run.data.tags["stage"]: run for run in child_runs(client, parent.info.run_id)}
    assert sorted(children) == sorted(STAGES)
    assert all(run.info.status == "FINISHED" and run.data.metrics for run in children.values())
    history = client.get_metric_history(children["pretrain"].info.run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(1, tiny_params_dict()["pretrain"]["epochs"] + 1))
    summary = flow_artifacts(pushed_run.state.state_details.flow_run_id)["pipeline-summary"]
    assert f"{tracking_server.url}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}" in summary

    # artifacts go through the server to its own store, never to a folder of the project
    assert client.get_experiment(parent.info.experiment_id).artifact_location.startswith("mlflow-artifacts:")
    assert not (pushed_run.project / "mlflow.db").exists() and not (pushed_run.project / "mlartifacts").exists()
    downloaded = Path(client.download_artifacts(children["ingest"].info.run_id, "ingest.json", str(tmp_path)))
    assert downloaded.read_bytes() == (pushed_run.project / "reports" / "ingest.json").read_bytes()
    assert any(path.read_bytes() == downloaded.read_bytes() for path in tracking_server.artifacts.rglob("ingest.json"))


def test_evaluate_registers_and_gates_its_candidate_on_the_server(tracking_server: TrackingServer, tmp_path: Path,
                                                                   tiny_data: dict[str, Path],
                                                                   tiny_transferred: dict[str, Any],
                                                                   tiny_compressed: dict[str, Any]) -> None:
    """The evaluate stage's command, pointed at the server by MLFLOW_TRACKING_URI alone, registers its candidate
    there and gives it the champion alias; a client with nothing but the server's address loads and runs it. The
    compressed variants were made without tracking: evaluate logs the candidate's served model itself."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict()))
    subprocess.run([sys.executable, "-m", "tasks.evaluate", "--params", str(params),
                    "--transferred", str(tiny_transferred["model"]), "--compressed", str(tiny_compressed["dir"]),
                    "--target", str(tiny_data["target"]), "--table-out", str(tmp_path / "evaluate.csv"),
                    "--confusion-out", str(tmp_path / "confusion.png"), "--pareto-out", str(tmp_path / "pareto.png"),
                    "--predictions-dir", str(tmp_path / "predictions"), "--metrics", str(tmp_path / "evaluate.json")],
                   cwd=ROOT, check=True)
    client = MlflowClient(tracking_server.url, registry_uri=tracking_server.url)
    name = tiny_params_dict()["evaluate"]["registered_model"]
    champion = client.get_model_version_by_alias(name, CHAMPION)
    evaluate_run = client.get_run(champion.run_id)
    assert evaluate_run.data.tags["stage"] == "evaluate" and evaluate_run.info.status == "FINISHED"
    int8_run = item_runs(client, evaluate_run.info.run_id, "variant")["int8"]  # the variant's own child run
    assert int8_run.data.metrics["accuracy"] == pytest.approx(
        yaml.safe_load((tmp_path / "evaluate.json").read_text())["variants"]["int8"]["accuracy"])
    assert "accuracy" not in evaluate_run.data.metrics, "no score of one variant under the stage run's keys"
    script = ("import mlflow, numpy, sys; mlflow.set_tracking_uri(sys.argv[1]); "
              f"model = mlflow.pyfunc.load_model('models:/{name}@{CHAMPION}'); "
              "out = model.predict(numpy.zeros((3, 1, 28, 28), numpy.float32)); "  # a DataFrame: class, probabilities
              "print(numpy.stack(out['probabilities']).shape)")
    shown = subprocess.run([sys.executable, "-I", "-c", script, tracking_server.url], cwd=tmp_path,
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert shown.stdout.strip().endswith("(3, 10)")


def test_pushed_data_and_models_restore_in_a_fresh_clone(pushed_run: PushedRun, tmp_path: Path) -> None:
    project = pushed_run.project
    assert "in sync" in dvc(project, "status", "--cloud"), "the flow pushed every output to the remote"
    subprocess.run([*GIT, "add", "dvc.lock"], cwd=project, check=True)
    subprocess.run([*GIT, "commit", "-qm", "pipeline run"], cwd=project, check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert not (clone / "models").exists()
    assert str(pushed_run.remote) in dvc(clone, "remote", "list"), "the clone knows the remote from .dvc/config"
    dvc(clone, "pull", "dvc.yaml")  # the pipeline graph: the adaptive loop here never ran
    assert output_digests(clone) == output_digests(project)
    assert "up to date" in dvc(clone, "status", "dvc.yaml"), "nothing reruns after a pull"


def test_push_without_a_remote_stops_before_any_stage(tracking_server: TrackingServer, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project", tiny_params_dict())
    dvc(project, "remote", "default", "--unset")  # the project's own default (a folder beside it) taken away
    client = MlflowClient(tracking_server.url, registry_uri=tracking_server.url)
    runs_before = run_count(client)
    state = pipeline(project_dir=str(project), push=True, return_state=True)
    assert state.is_failed()
    with pytest.raises(PushFailed, match=r"has no default remote\. Add one, e\.g\. `dvc remote add -d storage"):
        state.result()
    with pytest.raises(ValueError, match=r"dvc exp push"):
        pipeline(project_dir=str(project), overrides={"transfer.epochs": 3}, push=True)
    assert not (project / "data").exists() and not (project / "dvc.lock").exists()
    assert run_count(client) == runs_before, "no MLflow run is opened for a flow that cannot start"


def run_count(client: MlflowClient) -> int:
    return len(client.search_runs([experiment.experiment_id for experiment in client.search_experiments()]))
