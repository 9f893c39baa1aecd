"""The flow end to end: a real Prefect test server, real `dvc repro`, a real MLflow store, on a temporary copy
of the project with tiny params."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from flows.adaptive import adaptive_loop
from flows.lock import PipelineBusy
from flows.pipeline import pipeline, run_stage
from flows.repro import (
    RAN,
    SKIPPED,
    StageFailed,
    StageResult,
    repro_stage,
    stage_environment,
    stage_order,
    stages_to_run,
)
from flows.summary import mlflow_address
from groundwork.adaptive.champion import read_pointer
from groundwork.compression.names import SERVED, VARIANTS
from groundwork.params import ParamsError
from groundwork.project import ROOT, copy_project, tiny_params_dict
from groundwork.tracking.registry import logged_model_id
from groundwork.tracking.runs import DEFAULT_EXPERIMENT, tracking_uri
from groundwork.training.precision import precision_used
from tests.helpers import (
    browse,
    change_params,
    child_runs,
    clone_ran_project,
    dvc,
    flow_artifacts,
    item_runs,
    mlflow_ui,
    needs_browser,
    output_digests,
    page_text,
    parent_runs,
    pipeline_status,
    prefect_ui,
    published_artifacts,
    statuses,
)

pytestmark = [pytest.mark.e2e, pytest.mark.server]
STAGES = ["ingest", "augment", "pretrain", "transfer", "budget", "machine", "latency", "search", "compress", "evaluate"]
UNCHANGED = dict.fromkeys(STAGES, SKIPPED) | {"machine": RAN}  # the fingerprint is read every run (always_changed)


@pytest.fixture(scope="module")
def prefect_server(prefect_test_server: None) -> Iterator[None]:
    """The Prefect test server for the module's flow runs, with no MLflow settings leaking in from outside."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
            patch.delenv(name, raising=False)
        yield


@dataclass(frozen=True)
class FirstRun:
    project: Path
    state: Any  # the flow run's final Prefect state


@pytest.fixture(scope="module")
def first_run(prefect_server: None, tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    """A fresh copy of the project with tiny params, after one flow run: read, never changed, by the tests."""
    project = copy_project(tmp_path_factory.mktemp("project"), tiny_params_dict())
    state = pipeline(project_dir=str(project), return_state=True)
    assert state.is_completed(), state
    return FirstRun(project=project, state=state)


@pytest.fixture
def project(first_run: FirstRun, tmp_path: Path) -> Path:
    """A copy of the project as the first run left it, for a test that changes it: each such test starts from
    the same state, whichever tests ran before it."""
    return clone_ran_project(first_run.project, tmp_path / "project")


def test_stage_order_comes_from_dvc(tmp_path: Path) -> None:
    # on a copy: opening the DVC repository writes DVC's .dvc/tmp, and tests write nothing into the project
    assert stage_order(copy_project(tmp_path, tiny_params_dict())) == STAGES


# DVC's edges among the pipeline's stages, as dvc.yaml declares them (a stage's deps and params files)
UPSTREAM = {"ingest": set(), "augment": {"ingest"}, "pretrain": {"ingest", "augment"},
            "transfer": {"ingest", "pretrain"}, "budget": {"ingest", "pretrain"}, "machine": set(),
            "latency": {"machine"}, "search": {"ingest", "transfer", "latency"},
            "compress": {"ingest", "transfer", "search"}, "evaluate": {"ingest", "transfer", "compress"}}


def test_the_flow_run_draws_dvc_s_graph_and_logs_at_the_lines_levels(first_run: FirstRun) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    flow_run_id = first_run.state.state_details.flow_run_id
    deadline = time.monotonic() + 30  # the server records task runs from events: a name may settle a moment late
    while True:
        with get_client(sync_client=True) as client:
            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        name_of = {run.id: run.name for run in task_runs}
        waits = {run.name: {name_of[source.id] for source in run.task_inputs.get("wait_for", [])}
                 for run in task_runs}
        if waits == UPSTREAM or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert waits == UPSTREAM
    # DVC's advice after each stage stays out of the log (DEBUG); nothing a stage wrote at WARNING arrives as INFO
    assert not [log.message for log in logs if "To track the changes with git" in log.message]
    assert not [log.message for log in logs if log.level == logging.INFO and " WARNING " in log.message]
    assert any(log.message.startswith("Running stage 'pretrain'") and log.level == logging.INFO for log in logs)


def test_first_run_executes_every_stage_and_records_them(first_run: FirstRun) -> None:
    project, state = first_run.project, first_run.state
    results = state.result()
    assert statuses(results) == dict.fromkeys(STAGES, RAN)
    artifacts = flow_artifacts(state.state_details.flow_run_id)
    summary = artifacts["pipeline-summary"]
    assert all(f"| {stage} | ran |" in summary for stage in STAGES)
    assert "promoted to `champion`" in summary and "/#/experiments/" in summary and "`groundwork serve`" in summary
    assert "- policy search (ddpg, " in summary and "random search n/a" not in summary
    chosen = json.loads((project / "reports" / "evaluate.json").read_text())["selection"]["chosen"]
    assert [row["variant"] for row in json.loads(artifacts["model-variants"])] == [
        f"{name} (registered)" if name == chosen else name for name in VARIANTS]
    assert "## Which model ships" in summary and f"- `{chosen}`: chosen" in summary
    declared = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    for stage, spec in declared.items():
        for out in [*spec.get("outs", []), *spec["metrics"]]:
            path = out if isinstance(out, str) else next(iter(out))  # a dict where the output has options
            assert (project / path).exists(), f"{stage} did not write {path}"
    assert (project / "dvc.lock").exists()

    client = MlflowClient(tracking_uri(project))
    [parent] = parent_runs(client)
    assert parent.info.status == "FINISHED"
    # the parent run answers on its overview: the registered variant's scores, the gate's decision, a description
    evaluated = json.loads((project / "reports" / "evaluate.json").read_text())
    registered = evaluated["variants"][chosen]
    assert parent.data.metrics["registered_accuracy"] == pytest.approx(registered["accuracy"])
    assert parent.data.metrics["registered_times_smaller"] == pytest.approx(
        registered["times_smaller_than_fp32_state_dict"])
    assert parent.data.metrics["transfer_accuracy"] == pytest.approx(
        json.loads((project / "reports" / "transfer.json").read_text())["transfer_accuracy"])
    assert parent.data.tags["gate_decision"] == "promoted to champion"
    assert (parent.data.tags["registered_variant"], parent.data.tags["registered_version"]) == (chosen, "1")
    assert parent.data.tags["mlflow.note.content"].startswith(f"Registered `{evaluated['registry']['model']}` ")
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development", "opens as model training"
    assert "parent run" in experiment.tags["mlflow.note.content"]
    children = child_runs(client, parent.info.run_id)
    assert sorted(run.data.tags["stage"] for run in children) == sorted(STAGES)
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.metrics, f"{run.info.run_name} has no metrics"
        assert run.data.tags["git_commit"] == parent.data.tags["git_commit"]
        assert run.data.tags["prefect_flow_run_id"] == parent.data.tags["prefect_flow_run_id"]
        reads_data = run.data.tags["stage"] not in {"machine", "latency"}  # these two time the machine
        assert any(tag.startswith("data_digest.") for tag in run.data.tags) == reads_data
        assert run.data.tags["stage_start"] == "warm", f"{run.info.run_name} was not forked from the stage server"
    by_stage = {run.data.tags["stage"]: run for run in children}
    # one run per variant under evaluate, its scores under plain names; each served variant's model the same
    variant_runs = item_runs(client, by_stage["evaluate"].info.run_id, "variant")
    assert sorted(variant_runs) == sorted(VARIANTS)
    for name, run in variant_runs.items():
        assert run.info.status == "FINISHED" and run.data.tags["item_of"] == "evaluate"
        assert run.data.metrics["accuracy"] == pytest.approx(evaluated["variants"][name]["accuracy"])
    assert not {"accuracy", "variants.int8.accuracy"} & by_stage["evaluate"].data.metrics.keys()
    # each stage logs the params dvc.yaml declares for it, key by key where it reads part of a section
    logged = {stage: run.data.params for stage, run in by_stage.items()}
    assert "transfer.lr" in logged["budget"] and "transfer.nproc" not in logged["budget"]
    assert "augment.rotation.degrees" in logged["pretrain"] and "augment.preview_images" not in logged["pretrain"]
    evaluate_keys = {f"evaluate.{key}.{sub}" if isinstance(value, dict) else f"evaluate.{key}"
                     for key, value in tiny_params_dict()["evaluate"].items()
                     for sub in (value if isinstance(value, dict) else [None])}
    assert set(logged["evaluate"]) == evaluate_keys | {
        "ingest.target.size", "ingest.target.color"}  # the served contract, for a candidate compress did not log
    # the stages that train record the arithmetic they used (params.yaml's `auto`: bf16 on a CPU with native bf16,
    # else fp32), the others do not
    used = precision_used(tiny_params_dict()["precision"], torch.device("cpu"))
    trained = {"pretrain", "transfer", "budget", "search", "compress"}  # search: its distilled reward fine-tunes
    assert {stage for stage, run_params in logged.items() if "training_precision" in run_params} == trained
    assert {logged[stage]["training_precision"] for stage in trained} == {used}
    assert {stage: json.loads((project / "reports" / f"{stage}.json").read_text()).get("training_precision")
            for stage in STAGES} == {stage: used if stage in trained else None for stage in STAGES}
    pretrain_history = client.get_metric_history(by_stage["pretrain"].info.run_id, "val_accuracy")
    assert [m.step for m in pretrain_history] == list(range(1, tiny_params_dict()["pretrain"]["epochs"] + 1))
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    model_stages = {by_run.data.tags["stage"] for by_run in children
                    if any(m.source_run_id == by_run.info.run_id for m in models)}
    assert model_stages == {"pretrain", "transfer", "compress"}  # evaluate registers compress's, no copy
    # each logged model declares what it needs to run and no more: no torch for a served (ONNX) model
    needs = {}
    for model in models:
        files = {name: Path(download_artifacts(artifact_uri=f"{model.artifact_location}/{name}")).read_text()
                 for name in ("MLmodel", "requirements.txt")}
        flavor = "pytorch" if "pytorch" in yaml.safe_load(files["MLmodel"])["flavors"] else "served"
        packages = frozenset(line.split("==")[0] for line in files["requirements.txt"].split())
        needs.setdefault(flavor, set()).add(packages)
    assert needs == {"served": {frozenset({"mlflow", "numpy", "pandas", "pillow", "onnxruntime"})},
                     "pytorch": {frozenset({"mlflow", "torch", "cloudpickle", "numpy"})}}, needs
    # each served variant carries its own scores on the target data, as evaluate measured them, and no other's
    served = {model.tags["variant"]: model for model in models if "variant" in model.tags}
    assert sorted(served) == sorted(SERVED)
    evaluated = {row["variant"]: row for row in csv.DictReader((project / "reports" / "evaluate.csv").open())}
    for variant, model in served.items():
        scores = {metric.key: metric for metric in model.metrics}
        assert np.isclose(scores["accuracy"].value, float(evaluated[variant]["accuracy"])), variant
        assert {metric.dataset_name for metric in model.metrics} == {"target"}
        assert len({metric.key for metric in model.metrics}) == len(model.metrics), "each score once"
        assert {metric.run_id for metric in model.metrics} == {variant_runs[variant].info.run_id}
    name = tiny_params_dict()["evaluate"]["registered_model"]
    assert client.get_registered_model(name).aliases == {"champion": 1}
    assert by_stage["evaluate"].data.tags["gate.decision"] == "promoted"
    # lineage: from the champion's version back to the run, its commit, data, DVC stage and flow run
    version = client.get_model_version(name, "1")
    chosen = json.loads((project / "reports" / "evaluate.json").read_text())["selection"]["chosen"]
    assert logged_model_id(version) == served[chosen].model_id
    assert version.tags["selection.variant"] == chosen and "selection.rule" in version.tags
    source_run = client.get_run(version.run_id)
    assert source_run.data.tags["stage"] == "compress" and source_run.data.tags["git_dirty"] == "false"
    assert len(source_run.data.tags["dvc_lock_hash"]) == 64
    assert [d.dataset.name for d in source_run.inputs.dataset_inputs] == ["target"]
    [target] = [d.dataset for d in source_run.inputs.dataset_inputs]  # its schema and row counts, as MLflow shows
    assert '"dtype": "uint8", "shape": [-1, 28, 28]' in target.schema.replace('\\"', '"')
    with np.load(project / "data" / "processed" / "target.npz") as stored:
        shapes = {key: list(stored[key].shape) for key in stored.files if key.endswith("_images")}
    assert json.loads(target.profile)["features_shape"] == shapes
    assert source_run.data.tags["prefect_flow_run_id"] == str(state.state_details.flow_run_id)
    card = version.description  # the same lineage on the version's card: commit and the outputs DVC recorded
    assert f"- git_commit: `{source_run.data.tags['git_commit']}`" in card
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    compressed = next(out["md5"] for out in lock["compress"]["outs"] if out["path"] == "models/compressed")
    assert f"- compress: models/compressed: `{compressed}`" in card
    budget_curve = client.list_artifacts(by_stage["budget"].info.run_id, "plots")
    assert [a.path for a in budget_curve] == ["plots/budget_curve.png"]
    # the search's reward per episode as metric series, its plot and the policy compress read
    episodes = tiny_params_dict()["search"]["episodes"]
    search_run = by_stage["search"].info.run_id
    agent_run = item_runs(client, search_run, "method")["agent"].info.run_id  # the method's own child run
    assert [m.step for m in client.get_metric_history(agent_run, "episode_best")] == list(range(episodes))
    assert len(client.get_metric_history(agent_run, "episode_best_width_layer4")) == episodes  # the embedding
    assert [a.path for a in client.list_artifacts(search_run, "plots")] == ["plots/search_rewards.png"]
    assert "search/search_policy.json" in [a.path for a in client.list_artifacts(search_run, "search")]


@needs_browser
@pytest.mark.browser
def test_what_a_user_opens_shows_the_answer_in_a_browser(first_run: FirstRun, tmp_path: Path) -> None:
    """In headless Chromium with outside addresses blocked (screenshots kept in tmp_path): the experiment in its
    Model training view, the parent run's headline, evaluate's run, the registered model and the champion's card;
    the Prefect flow run (its graph, task runs and log) and its summary and variants artifacts, in the Prefect UI
    on the test server's database (the graph's edges are checked through the API in the test above); and every
    vega plot of `dvc plots show` drawn."""
    project = first_run.project
    client = MlflowClient(tracking_uri(project))
    [parent] = parent_runs(client)
    experiment = parent.info.experiment_id
    evaluated = json.loads((project / "reports" / "evaluate.json").read_text())
    chosen = evaluated["selection"]["chosen"]
    with mlflow_ui(project, tmp_path / "mlflow-ui.log") as address:
        runs = browse(mlflow_address("sqlite:///", experiment, ui=address), tmp_path / "chromium",
                      screenshot=tmp_path / "experiment.png")
        assert parent.info.run_name in runs and "matching runs" in runs, "the runs table (Model training)"
        assert "Detect Issues" not in runs, "not the GenAI overview"
        overview = page_text(browse(mlflow_address("sqlite:///", experiment, parent.info.run_id, ui=address),
                                    tmp_path / "chromium", screenshot=tmp_path / "parent-run.png"))
        # the metrics table's cells, as the UI prints them (a float's shortest repr, as Python's)
        assert f"registered_accuracy{evaluated['variants'][chosen]['accuracy']}" in overview, "the headline shows"
        assert "gate_decision: promoted to champion" in overview
        evaluate_run = client.search_runs([experiment], "tags.stage = 'evaluate'")[0]
        scores = browse(mlflow_address("sqlite:///", experiment, evaluate_run.info.run_id, ui=address),
                        tmp_path / "chromium", screenshot=tmp_path / "evaluate-run.png")
        assert evaluate_run.info.run_name in scores and "test_images" in scores
        name = evaluated["registry"]["model"]
        model = page_text(browse(f"{address}/#/models/{name}", tmp_path / "chromium",
                                 screenshot=tmp_path / "registered-model.png"))
        assert "Digit classifiers from the groundwork pipeline" in model, "the registered model's description"
        assert "champion" in model and "gate.decision" in model, "the alias and the gate's tags on the version"
        card = page_text(browse(f"{address}/#/models/{name}/versions/1", tmp_path / "chromium",
                                screenshot=tmp_path / "champion-version.png"))
        assert f"version 1: the {chosen} variant" in card and f"{chosen} (this version)" in card
    flow_run_id = first_run.state.state_details.flow_run_id
    with prefect_ui(tmp_path / "prefect-ui.log") as address:
        flow_run = page_text(browse(f"{address}/runs/flow-run/{flow_run_id}", tmp_path / "chromium",
                                    screenshot=tmp_path / "prefect-flow-run.png"))
        assert all(stage in flow_run for stage in STAGES), "the task runs are listed"
        assert "Running stage 'ingest'" in flow_run, "the log opens the run page"
        published = published_artifacts(flow_run_id)
        summary = page_text(browse(f"{address}/artifacts/artifact/{published['pipeline-summary'].id}",
                                   tmp_path / "chromium", screenshot=tmp_path / "prefect-summary.png"))
        assert "Which model ships" in summary and "promoted to champion" in summary
        variants = page_text(browse(f"{address}/artifacts/artifact/{published['model-variants'].id}",
                                    tmp_path / "chromium", screenshot=tmp_path / "prefect-variants.png"))
        assert f"{chosen} (registered)" in variants and all(name in variants for name in VARIANTS)
    dvc(project, "plots", "show", "-o", str(tmp_path / "plots"))
    # (the adaptive loop's plots are empty until it runs)
    vega = [name for name, plots in json.loads(dvc(project, "plots", "show", "--json"))["data"].items()
            if plots and plots[0]["type"] == "vega"]
    page = browse((tmp_path / "plots" / "index.html").as_uri(), tmp_path / "chromium",
                  screenshot=tmp_path / "dvc-plots.png")
    assert "cdn.jsdelivr.net" not in page, "no library comes from a CDN"
    assert 'class="plot-error"' not in page, "no plot reported an error"
    drawn = [block for block in page.split('<div id="')[1:] if "<svg" in block and 'role="graphics-symbol"' in block]
    assert len(vega) == 8 + len(VARIANTS) and len(drawn) == len(vega), (len(vega), len(drawn))


def test_second_run_executes_nothing(project: Path) -> None:
    results = pipeline(project_dir=str(project))
    assert statuses(results) == UNCHANGED
    client = MlflowClient(tracking_uri(project))
    second = parent_runs(client)[-1]
    assert [run.data.tags["stage"] for run in child_runs(client, second.info.run_id)] == ["machine"]
    assert pipeline_status(project) == {}


def test_overrides_run_as_a_dvc_experiment(project: Path) -> None:
    params_before = (project / "params.yaml").read_bytes()
    outputs_before = output_digests(project)
    # a key only evaluate reads: the experiment runs that stage alone (which stages a key reruns is the next test's)
    latency_runs = tiny_params_dict()["evaluate"]["latency_runs"] + 1
    state = pipeline(project_dir=str(project), overrides={"evaluate.latency_runs": latency_runs}, return_state=True)
    ran = [stage for stage, status in statuses(state.result()).items() if status == RAN]
    assert ran == ["machine", "evaluate"]  # (the fingerprint is read every run)
    assert (project / "params.yaml").read_bytes() == params_before, "params.yaml is never edited"
    assert output_digests(project) == outputs_before, "the experiment ran outside the working tree"
    name = flow_artifacts(state.state_details.flow_run_id)["pipeline-summary"].split("DVC experiment `")[1]
    name = name.split("`")[0]
    assert name in dvc(project, "exp", "list", "--name-only")
    client = MlflowClient(tracking_uri(project))
    children = child_runs(client, parent_runs(client)[-1].info.run_id)
    assert {run.data.tags["stage"] for run in children} == set(ran)
    assert {run.data.tags["dvc_experiment"] for run in children} == {name}
    with pytest.raises(ParamsError, match=r"override 'transfer\.epochz': no such param key"):
        pipeline(project_dir=str(project), overrides={"transfer.epochz": 3})


def test_served_deployment_runs_on_its_schedule_and_on_demand(project: Path) -> None:
    """`make schedule`'s process registers prefect.yaml's deployment. Two runs triggered through the API at once: one
    completes, and Prefect's own concurrency limit (CANCEL_NEW) cancels the other before it starts, instead of it
    failing half-way on DVC's lock or the project's."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    # the runner looks for due runs every second (10 by default), so the triggered run starts without a wait
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(project),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    server = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=project, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deployment = None
        with get_client(sync_client=True) as client:
            for _ in range(120):
                try:
                    deployment = client.read_deployment_by_name("groundwork-pipeline/nightly")
                    break
                except Exception:  # not registered yet: the server process is still starting
                    assert server.poll() is None, server.stderr.read() if server.stderr else ""
                    time.sleep(0.5)
        assert deployment is not None, "the deployment was never registered"
        [schedule] = deployment.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "UTC")
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.concurrency_options.collision_strategy == "CANCEL_NEW"
        before = output_digests(project)
        triggered = [run_deployment("groundwork-pipeline/nightly", timeout=0) for _ in range(2)]
        with get_client(sync_client=True) as client:
            for _ in range(300):
                ended = [client.read_flow_run(run.id) for run in triggered]
                if all(run.state is not None and run.state.is_final() for run in ended):
                    break
                time.sleep(1)
        states = sorted((run.state.type.value, run.state.message or "") for run in ended)
        assert [kind for kind, _ in states] == ["CANCELLED", "COMPLETED"], states
        assert states[0][1] == "Deployment concurrency limit reached."
        cancelled = next(run for run in ended if run.state.is_cancelled())
        with get_client(sync_client=True) as client:
            history = [state.type.value for state in client.read_flow_run_states(cancelled.id)]
        assert "RUNNING" not in history, f"the cancelled run never ran, so no stage of it did: {history}"
        assert output_digests(project) == before
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_transfer_param_change_reruns_exactly_the_stages_that_read_it(project: Path) -> None:
    change_params(project, "transfer", epochs=tiny_params_dict()["transfer"]["epochs"] + 1)
    # what the flow hands to `dvc repro`: the changed stage and those downstream of it, not budget (a sibling)
    # (and the machine's fingerprint, read every run, with the stages after it: DVC finds the table unchanged)
    assert stages_to_run(project, stage_environment({})) == ["transfer", "machine", "latency", "search", "compress",
                                                              "evaluate"]
    results = pipeline(project_dir=str(project))
    ran = [stage for stage, status in statuses(results).items() if status == RAN]
    assert ran == ["transfer", "machine", "search", "compress", "evaluate"]  # budget sets its epochs from budget.steps
    assert "transfer.epochs" in dvc(project, "params", "diff")


def test_a_key_a_stage_does_not_read_never_reruns_it(project: Path) -> None:
    """Params are declared key by key where a stage reads part of a section: the preview size is the augment
    stage's alone, and the number of processes is transfer's, not the budget sweep's. No stage reads the tracking
    section: turning system metrics on reruns nothing. Nor does Python writing byte-code next to the code."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "groundwork", "tasks", "flows"], cwd=project,
                   check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    assert any((project / "groundwork").rglob("*.pyc"))
    change_params(project, "tracking", system_metrics=True, system_metrics_interval=5.0)
    assert pipeline_status(project) == {}
    change_params(project, "transfer", nproc=2)
    assert set(pipeline_status(project)) == {"transfer"}
    change_params(project, "transfer", nproc=1)
    change_params(project, "augment", preview_images=tiny_params_dict()["augment"]["preview_images"] + 1)
    assert set(pipeline_status(project)) == {"augment"}
    results = pipeline(project_dir=str(project))
    assert [stage for stage, status in statuses(results).items() if status == RAN] == ["augment", "machine"]


def test_groundwork_repro_starts_the_stages_that_run_warm(project: Path) -> None:
    change_params(project, "augment", preview_images=tiny_params_dict()["augment"]["preview_images"] + 1)
    env = {k: v for k, v in os.environ.items() if k != "GROUNDWORK_STAGE_SERVER"}  # not the suite's own server
    done = subprocess.run([str(Path(sys.executable).parent / "groundwork"), "repro", "--project-dir", str(project)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri(project))
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id
    [latest, *_] = client.search_runs([experiment], "tags.stage = 'augment'", order_by=["start_time DESC"])
    assert latest.info.status == "FINISHED" and latest.data.tags["stage_start"] == "warm"
    assert "pipeline" not in latest.data.tags.get("mlflow.parentRunId", ""), "no flow: a run of its own"


# Measured, not reproduced: evaluate's timings throughout its reports, and the seconds (and rates) other stages
# report beside their results.
MEASURED_EACH_RUN = ("reports/evaluate", "reports/variants", "reports/model_card", "reports/pareto",
                     "reports/latency")
MEASURED_KEYS = frozenset({"seconds", "images_per_second", "int8_latency_ms"})


def without_measured(value: Any) -> Any:
    """A report's JSON with its measured keys dropped, at any depth."""
    if isinstance(value, dict):
        return {key: without_measured(item) for key, item in value.items() if key not in MEASURED_KEYS}
    return [without_measured(item) for item in value] if isinstance(value, list) else value


def test_every_stage_started_cold_writes_what_the_flow_s_warm_stages_wrote(first_run: FirstRun,
                                                                          tmp_path: Path) -> None:
    project = clone_ran_project(first_run.project, tmp_path / "project")
    warm = output_digests(project)
    # as the flow starts DVC (its PATH, the project's store), without a stage server: every stage its own process
    env = {k: v for k, v in stage_environment({"MLFLOW_TRACKING_URI": tracking_uri(project)}).items()
           if k != "GROUNDWORK_STAGE_SERVER"}
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", "--force", "dvc.yaml"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri(project))
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id
    cold_runs = client.search_runs([experiment], "tags.stage_start = 'cold'")  # stage runs and their item runs
    assert sorted(run.data.tags["stage"] for run in cold_runs if "item_of" not in run.data.tags) == sorted(STAGES)
    cold = output_digests(project)
    assert set(cold) == set(warm)
    differ = sorted(name for name in warm if cold[name] != warm[name] and not name.startswith(MEASURED_EACH_RUN)
                    and not (name.endswith(".json") and without_measured(json.loads((project / name).read_text()))
                             == without_measured(json.loads((first_run.project / name).read_text()))))
    assert differ == [], f"started cold, these stage outputs differ from the warm run's: {differ}"


def test_transient_failure_is_retried_by_prefect(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    change_params(project, "evaluate", latency_runs=tiny_params_dict()["evaluate"]["latency_runs"] + 1)
    attempts: list[str] = []

    def fails_once(stage: str, **kwargs: Any) -> StageResult:
        attempts.append(stage)
        if stage == "evaluate" and attempts.count("evaluate") == 1:
            raise StageFailed("stage 'evaluate' failed: injected transient fault", transient=True)
        return repro_stage(stage, **kwargs)

    monkeypatch.setattr("flows.pipeline.repro_stage", fails_once)
    # the retry itself is what the test shows, not its 5 s delay
    monkeypatch.setattr("flows.pipeline.run_stage", run_stage.with_options(retry_delay_seconds=0))
    results = pipeline(project_dir=str(project))
    assert attempts.count("evaluate") == 2
    assert statuses(results)["evaluate"] == RAN
    assert pipeline_status(project) == {}


@contextmanager
def lock_held_elsewhere(project: Path) -> Iterator[int]:
    """The project's lock held by another process for the duration, as a flow run in progress holds it; its pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from flows.lock import pipeline_lock\n"
         "with pipeline_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)", str(project)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_second_flow_is_refused_while_one_runs(project: Path) -> None:
    before = output_digests(project)
    with lock_held_elsewhere(project) as holder:
        state = pipeline(project_dir=str(project), return_state=True)
        assert state.is_failed()
        with pytest.raises(PipelineBusy, match=rf"another pipeline run is in progress .*\(pid {holder}\)"):
            state.result()
    assert output_digests(project) == before
    assert pipeline_status(project) == {}
    assert statuses(pipeline(project_dir=str(project))) == UNCHANGED  # the lock is free


def test_failing_stage_fails_the_flow_and_keeps_the_last_good_outputs(project: Path) -> None:
    before = output_digests(project)
    client = MlflowClient(tracking_uri(project))
    name = tiny_params_dict()["evaluate"]["registered_model"]
    champion = client.get_registered_model(name).aliases["champion"]
    change_params(project, "ingest", labels_per_class=500)  # valid type and range, more than the data holds
    state = pipeline(project_dir=str(project), return_state=True)
    assert state.is_failed()
    with pytest.raises(StageFailed, match=r"stage 'ingest' failed[\s\S]*labels_per_class=500 exceeds"):
        state.result()
    parent = parent_runs(client)[-1]
    assert parent.info.status == "FAILED"
    attempts = [run for run in child_runs(client, parent.info.run_id) if run.data.tags["stage"] == "ingest"]
    assert [run.info.status for run in attempts] == ["FAILED"], "bad data fails once: a retry would fail the same"
    assert client.get_registered_model(name).aliases["champion"] == champion
    after = output_digests(project)
    assert after == before, "the outputs of the last good run are back in place"
    status = dvc(project, "status", "--json", "dvc.yaml")
    assert "ingest" in status and "deleted" not in status, "only the params changed; no output is missing"


def test_bad_params_stop_the_flow_before_any_stage(project: Path) -> None:
    change_params(project, "pretrain", optimizer="rmsprop")
    client = MlflowClient(tracking_uri(project))
    runs_before = len(parent_runs(client))
    state = pipeline(project_dir=str(project), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"pretrain\.optimizer: Input should be 'sgd'"):
        state.result()
    assert len(parent_runs(client)) == runs_before, "no MLflow run is opened for a flow that cannot start"


ADAPTIVE = ["adaptive/dvc.yaml:monitor", "adaptive/dvc.yaml:ask", "adaptive/dvc.yaml:adapt"]


def simulate(project: Path, *args: str) -> str:
    """The offline stand-ins (stream writer, annotator) run as a user runs them, in the project."""
    result = subprocess.run([sys.executable, "-m", "groundwork.adaptive.simulate", *args], cwd=project,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_adaptive_loop_notices_drift_asks_for_labels_and_gates_a_challenger(project: Path) -> None:
    """Two iterations of the loop's flow on the pipeline's champion: the first sees the shifted batches and asks;
    labels come back; the second adapts, registers a challenger and gates it against forgetting."""
    simulate(project, "stream")
    first = adaptive_loop(project_dir=str(project), return_state=True)
    assert first.is_completed(), first
    assert statuses(first.result()) == dict.fromkeys(ADAPTIVE, RAN)
    assert (project / "data" / "incoming.dvc").exists() and (project / "data" / "labels.dvc").exists()
    evaluated = json.loads((project / "reports" / "evaluate.json").read_text())
    pointer = read_pointer(project / "models" / "champion")  # the loop watches what the pipeline registered
    assert (project / "models" / "champion.dvc").exists() and pointer.labels == frozenset()
    assert (pointer.version, pointer.form) == (str(evaluated["registry"]["version"]), evaluated["selection"]["chosen"])
    watched = json.loads((project / "reports/adaptive/monitor.json").read_text())
    assert (watched["batches"], watched["alarms"], watched["latest_alarm"]) == (3, 2, True)
    asked = json.loads((project / "reports/adaptive/ask.json").read_text())
    # what the reports and the summary say, against the queue file the annotator is handed
    queue = pd.read_csv(project / "reports/adaptive/queue/queue.csv")
    purposes = queue["purpose"].value_counts().to_dict()
    assert queue["image_id"].is_unique and set(purposes) == {"train", "holdout"}
    assert asked["queued"] == len(queue) and asked["alarmed_batches"] == watched["alarms"]
    assert not json.loads((project / "reports/adaptive/adapt.json").read_text())["adapted"]
    summary = flow_artifacts(first.state_details.flow_run_id)["adaptive-summary"]
    assert "| monitor | ran |" in summary and f"{len(queue)} image(s) queued ({purposes['holdout']} holdout" in summary
    assert "not adapted: 0 training label(s)" in summary
    client = MlflowClient(tracking_uri(project))
    run = client.search_runs([parent_runs(client)[0].info.experiment_id], "tags.stage = 'adaptive'")[0]
    assert (run.data.metrics["drift_alarms"], run.data.metrics["promoted"]) == (2, 0)
    assert run.data.tags["gate_decision"] == "not adapted"

    assert "labelled the queue" in simulate(project, "annotate")
    second = adaptive_loop(project_dir=str(project), return_state=True)
    assert second.is_completed(), second
    assert statuses(second.result()) == {ADAPTIVE[0]: SKIPPED, ADAPTIVE[1]: RAN, ADAPTIVE[2]: RAN}
    adapted = json.loads((project / "reports/adaptive/adapt.json").read_text())
    assert adapted["adapted"] and adapted["train_labels"] == purposes["train"]
    client = MlflowClient(tracking_uri(project))
    latest = client.search_runs([parent_runs(client)[0].info.experiment_id], "tags.stage = 'adaptive'",
                                order_by=["start_time DESC"])[0]
    assert latest.data.metrics["labels_used"] == purposes["train"]
    assert latest.data.metrics["promoted"] == float(adapted["promoted"])
    assert adapted["holdout_labels"] == purposes["holdout"]
    assert adapted["incumbent_model"] == "registered champion"
    name = tiny_params_dict()["evaluate"]["registered_model"]
    aliases = client.get_registered_model(name).aliases
    version = str(adapted["registry"]["version"])
    assert str(aliases["challenger"]) == version
    assert (str(aliases["champion"]) == version) is adapted["promoted"]
    tags = client.get_model_version(name, version).tags
    assert tags["gate.decision"] == ("promoted" if adapted["promoted"] else "kept champion")
    assert tags["learnt_from"].startswith("runs:/") and tags["gate.test"] == "exact McNemar"
    assert tags["fp32_weights"].endswith("/challenger.pt") and tags["form"] == pointer.form, "served in its form"
    card = client.get_model_version(name, version).description
    assert "a challenger from the adaptive loop" in card and adapted["reason"] in card
    rows = [line.split("|")[1].strip() for line in card.splitlines() if line.startswith("| ")]
    assert "**challenger** (this version)" in rows and "registered champion" in rows
    scores = {m.key: m.value for m in client.get_logged_model(logged_model_id(client.get_model_version(
        name, version))).metrics}  # the challenger's own, linked to its model: what a later gate reads
    assert scores == pytest.approx({"accuracy": adapted["challenger"]["original_accuracy"],
                                    "holdout_accuracy": adapted["challenger"]["holdout_accuracy"]})
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    loops = client.search_runs([experiment.experiment_id], "tags.stage = 'adaptive'", order_by=["start_time ASC"])
    assert [run.info.status for run in loops] == ["FINISHED", "FINISHED"]
    assert sorted(run.data.tags["stage"] for run in child_runs(client, loops[-1].info.run_id)) == ["adapt", "ask"]
    assert "decision: " in flow_artifacts(second.state_details.flow_run_id)["adaptive-summary"]
    assert "up to date" in dvc(project, "status", "adaptive/dvc.yaml")

    # no new labels: the next iteration follows the alias; a promoted challenger, which learnt every label given,
    # has nothing to learn; a kept champion's iteration is the one just run, so DVC skips every stage
    third = adaptive_loop(project_dir=str(project), return_state=True)
    assert third.is_completed(), third
    holder = read_pointer(project / "models" / "champion")
    assert holder.version == str(client.get_registered_model(name).aliases["champion"])
    if adapted["promoted"]:
        assert holder.version == version and len(holder.labels) == purposes["train"]
        assert statuses(third.result()) == dict.fromkeys(ADAPTIVE, RAN), "a new champion: monitored and asked anew"
        again = json.loads((project / "reports/adaptive/adapt.json").read_text())
        assert not again["adapted"] and again["learnt_labels"] == purposes["train"]
        assert f"0 training label(s) that {name} version {version} has not learnt" in again["reason"]
    else:
        assert holder.version == pointer.version
        assert statuses(third.result()) == dict.fromkeys(ADAPTIVE, SKIPPED)


def test_a_loop_killed_mid_adapt_leaves_the_champion_and_no_challenger(project: Path) -> None:
    simulate(project, "stream")
    truth = {path.stem: np.load(path) for path in (project / "data" / "stream_truth").glob("*.npy")}
    rows = [["image_id", "label", "purpose"]] + [[f"{prefix}-{index:05d}", str(label), "train"]
                                                 for prefix, labels in truth.items()
                                                 for index, label in enumerate(labels[:10])]
    (project / "data" / "labels").mkdir(parents=True)
    with (project / "data" / "labels" / "given.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["adaptive"]["adapt"]["finetune"]["epochs"] = 500  # long enough to be killed inside
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    client = MlflowClient(tracking_uri(project))
    name = tiny_params_dict()["evaluate"]["registered_model"]
    champion = client.get_registered_model(name).aliases["champion"]
    env = stage_environment({"MLFLOW_TRACKING_URI": tracking_uri(project)})  # the venv's python for dvc's command
    # the champion pointer, as a user running `dvc repro adaptive/dvc.yaml` by hand writes it
    subprocess.run([sys.executable, "-m", "groundwork.adaptive.champion"], cwd=project, check=True, env=env)
    victim = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", "adaptive/dvc.yaml:adapt"],
                              cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True, env=env)
    lines = []
    try:
        assert victim.stdout is not None
        for line in victim.stdout:
            lines.append(line)
            if "adapt epoch 1/500" in line:  # (epochs 2-49 log at DEBUG)
                os.killpg(victim.pid, signal.SIGKILL)  # dvc and the stage with it, as an OOM kill or a lost node
                break
    finally:
        victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "".join(lines[-30:])
    assert not (project / "models" / "challenger").exists() or not any((project / "models" / "challenger").iterdir())
    aliases = client.get_registered_model(name).aliases
    assert aliases["champion"] == champion and "challenger" not in aliases
    assert not (project / "adaptive" / "dvc.lock").exists(), "DVC recorded nothing of the killed stage"


def test_compress_killed_mid_way_leaves_no_part_of_a_new_set_of_variants(project: Path) -> None:
    lock = (project / "dvc.lock").read_text()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["compress"]["finetune"]["epochs"] = 500  # long enough to be killed inside
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = stage_environment({"MLFLOW_TRACKING_URI": tracking_uri(project)})
    victim = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", "compress"], cwd=project,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              env=env)
    lines = []
    try:
        assert victim.stdout is not None
        for line in victim.stdout:
            lines.append(line)
            if "variants to fine-tune" in line:  # fp32 and int8 are written by now, the fine-tunes under way
                os.killpg(victim.pid, signal.SIGKILL)  # dvc and the stage with it, as an OOM kill or a lost node
                break
    finally:
        victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "".join(lines[-30:])
    variants = project / "models" / "compressed"
    written = sorted(path.name for path in variants.iterdir()) if variants.exists() else []
    assert written == [], f"a killed compress left part of a new set of variants: {written}"
    assert (project / "dvc.lock").read_text() == lock, "DVC recorded nothing of the killed stage"


def test_a_loop_run_is_refused_while_another_run_holds_the_project(project: Path) -> None:
    simulate(project, "stream")
    with lock_held_elsewhere(project) as holder:
        state = adaptive_loop(project_dir=str(project), return_state=True)
        assert state.is_failed()
        with pytest.raises(PipelineBusy, match=rf"\(pid {holder}\)"):
            state.result()
    assert not (project / "data" / "incoming.dvc").exists() and not (project / "reports" / "adaptive").exists()


def test_a_parent_run_a_dead_server_left_running_is_closed_by_the_next_flow_run(
        prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real `mlflow server` killed while the flow's pretrain logs to it: the stage fails, the flow fails with the
    stage's error (closing its parent run fails too, and does not replace it), the parent run stays RUNNING.
    With the server back, the project's next flow run closes that run as FAILED before its own stages start, and
    leaves a RUNNING run of another project in the same store alone."""
    import threading

    from flows.parent_run import start_parent_run
    from groundwork.tracking.runs import CLOSED_LATE_TAG, HTTP_DEFAULTS, PROJECT_TAG, project_key
    from tests.helpers import start_tracking_server, stop_server, wait_until_healthy

    folder = tmp_path / "server"
    folder.mkdir()
    process, server = start_tracking_server(folder)
    project = copy_project(tmp_path / "project", tiny_params_dict(pretrain={"epochs": 20}))
    for name, value in HTTP_DEFAULTS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refused connection fails at once, stage and flow
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    client = MlflowClient(server.url)
    killed = threading.Event()

    def kill_once_pretrain_logs() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            try:
                runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                          "tags.stage = 'pretrain'")
                if runs and client.get_metric_history(runs[0].info.run_id, "val_accuracy"):
                    os.killpg(process.pid, signal.SIGKILL)  # the server and its workers, at once
                    killed.set()
                    return
            except Exception:  # the server may be starting, or already gone: ask again
                pass
            time.sleep(0.2)

    try:
        wait_until_healthy(process, server.url, folder / "server.log")
        (tmp_path / "other").mkdir()
        elsewhere = start_parent_run(run_name="pipeline · elsewhere", tags={}, root=tmp_path / "other")
        killer = threading.Thread(target=kill_once_pretrain_logs, daemon=True)
        killer.start()
        state = pipeline(project_dir=str(project), return_state=True)
        killer.join()
        assert killed.is_set() and state.is_failed()
        with pytest.raises(StageFailed, match=r"stage 'pretrain' failed[\s\S]*MLflow tracking at .* unreachable"):
            state.result()
        process.wait()
        process, _ = start_tracking_server(folder, port=int(server.url.rsplit(":", 1)[1]))  # the same server again
        wait_until_healthy(process, server.url, folder / "server.log")
        [stale] = [run for run in parent_runs(client) if run.data.tags[PROJECT_TAG] == project_key(project)]
        assert stale.info.status == "RUNNING", "the flow could not close its run: the server was down"

        change_params(project, "ingest", labels_per_class=500)  # the next run fails at once, in ingest
        state = pipeline(project_dir=str(project), return_state=True)
        with pytest.raises(StageFailed, match=r"stage 'ingest' failed"):
            state.result()
        runs = {run.info.run_id: run for run in parent_runs(client)}
        assert runs[stale.info.run_id].info.status == "FAILED"
        assert "next pipeline flow run" in runs[stale.info.run_id].data.tags[CLOSED_LATE_TAG]
        assert runs[elsewhere].info.status == "RUNNING" and CLOSED_LATE_TAG not in runs[elsewhere].data.tags
        [latest] = [run for run_id, run in runs.items() if run_id not in {stale.info.run_id, elsewhere}]
        assert latest.info.status == "FAILED" and CLOSED_LATE_TAG not in latest.data.tags, "closed by its own run"
    finally:
        stop_server(process)
