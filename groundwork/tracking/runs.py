"""The stage side of MLflow: the tracking store, one run per stage (a child of the flow's run when there is one),
what a stage may record in it (RunLog; a Tracker adds the Model Registry), and the tags that give lineage."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from groundwork.data.untrusted import read_npz
from groundwork.forkserver import STARTED_WARM_ENV
from groundwork.params import TrackingParams
from groundwork.tracking.item_runs import ITEM_OF_TAG, MetricWriter
from groundwork.tracking.metric_names import metric_points
from groundwork.tracking.registry_gate import MlflowRegistry, ModelRegistry, NullRegistry

log = logging.getLogger(__name__)

# The flow hands its MLflow run to stage processes through variables of our own: MLFLOW_RUN_ID would make
# each stage resume (and overwrite) the parent run instead of nesting under it.
PARENT_RUN_ENV = "GROUNDWORK_PARENT_RUN_ID"
FLOW_RUN_ID_ENV = "GROUNDWORK_FLOW_RUN_ID"
FLOW_RUN_NAME_ENV = "GROUNDWORK_FLOW_RUN_NAME"
DVC_EXPERIMENT_ENV = "DVC_EXP_NAME"  # set by `dvc exp run` for the stages it runs
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"  # MLflow's own variable, honoured here too
DEFAULT_EXPERIMENT = "groundwork"
NOTE_TAG = "mlflow.note.content"  # a run's or an experiment's description in the UI (markdown)
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, "agent versions")
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    NOTE_TAG: (
        "The groundwork pipeline's runs. Each flow run is a parent run, `pipeline · <flow run>` or "
        "`adaptive · <flow run>`: its overview gives the headline (source and target accuracy, the registered "
        "variant's accuracy, size and speed, the registry gate's decision), and its child runs are the stages "
        "(ingest, augment, pretrain, transfer, budget, search, compress, evaluate; monitor, ask, adapt), each with "
        "the params DVC declares for it and its metrics. The model variants are logged models of the compress run; "
        "the one that ships is registered in the Model Registry, the `champion` alias on the version serving (Models "
        "tab)."),
}
STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
PROJECT_TAG = "project"  # this machine and the project's folder (project_key): which runs are one project's
CLOSED_LATE_TAG = "closed_late"  # on a run closed as FAILED by a later run (close_stale_runs): why
STAGE_START_TAG = "stage_start"  # warm: forked from the stage server (groundwork.forkserver); cold: its own process

# MLflow's HTTP client retries a failed request 7 times with exponential backoff (waits of 0, 4, 8, ... capped at
# 120 s) and waits up to 120 s for each answer: once a tracking server is gone, each call takes about 4 minutes to
# fail, and a failing stage makes two (the log call that fails, then ending its run as FAILED): measured, a stage
# whose server was killed mid-epoch ended 498 s later. These defaults bound one call to 12-14 s against a server
# that is gone (4 attempts, waits of 0, 4 and 8 s plus up to 1 s of jitter each) and to about 54 s against one that
# accepts connections but never answers (4 attempts of 10 s more): the same stage ends about 30 s after its server
# dies (under 2 minutes at worst), and its rerun continues from its resume file. A value set in the environment wins.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class RunLog(Protocol):
    """What a stage may record in its own run: metrics, artifacts, models, datasets, tags."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_metrics_json(self, metrics: Mapping[str, Any]) -> None: ...
    def log_series(self, series: Mapping[str, Sequence[float]]) -> None: ...
    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None: ...
    def log_torch_model(self, model: torch.nn.Module, name: str, example: np.ndarray) -> None: ...
    def log_pyfunc_model(self, spec: Mapping[str, Any]) -> str | None: ...
    def find_logged_model(self, tags: Mapping[str, str]) -> str | None: ...
    def log_model_metrics(self, model_id: str, metrics: Mapping[str, float], dataset: str | None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_dataset(self, name: str, path: Path | str, digest: str, context: str) -> None: ...


class Tracker(RunLog, ModelRegistry, Protocol):
    """What the entry point hands a stage's run(): its run log and the Model Registry, one object (tests pass
    NullTracker). Code that needs only one of the two asks for RunLog or ModelRegistry."""


class NullTracker(NullRegistry):
    """Records nothing and reaches no registry: for tests and for calling stages as plain functions."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Ignore metrics."""

    def log_metrics_json(self, metrics: Mapping[str, Any]) -> None:
        """Ignore a stage's metrics."""

    def log_series(self, series: Mapping[str, Sequence[float]]) -> None:
        """Ignore metric series."""

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Ignore an artifact."""

    def log_torch_model(self, model: torch.nn.Module, name: str, example: np.ndarray) -> None:
        """Ignore a model."""

    def log_pyfunc_model(self, spec: Mapping[str, Any]) -> str | None:
        """Ignore a model: no id."""
        return None

    def find_logged_model(self, tags: Mapping[str, str]) -> str | None:
        """No store: nothing found."""
        return None

    def log_model_metrics(self, model_id: str, metrics: Mapping[str, float], dataset: str | None) -> None:
        """Ignore a model's metrics."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Ignore tags."""

    def log_dataset(self, name: str, path: Path | str, digest: str, context: str) -> None:
        """Ignore a dataset."""


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else the project's SQLite store `mlflow.db` in `root` (default: cwd).

    Every MLflow client of the project (stages and flows) resolves its store here, so here MLflow's HTTP client
    gets the bounded retry window of HTTP_DEFAULTS, for this process and the stage processes it starts."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or Path.cwd()).resolve() / STORE_FILE}"


def project_key(root: Path | None = None) -> str:
    """This machine's name and the project's folder (default: cwd), the PROJECT_TAG of its runs: a store may be
    shared by many projects and machines, and the locks that keep a project's runs apart hold on exactly this."""
    return f"{socket.gethostname()}:{(root or Path.cwd()).resolve()}"


def close_stale_runs(client: Any, experiment_id: str, *, stage: str, reason: str,
                     root: Path | None = None) -> list[str]:
    """End as FAILED, tagged CLOSED_LATE_TAG with `reason`, every run of `stage` (its `stage` tag: a stage's name
    or a flow's kind) in this project still RUNNING; return their ids. Only for a caller holding the lock that
    lets a project run one `stage` at a time (a flow's project lock, DVC's lock on a stage's outputs): any other
    such run is then one whose process ended without closing it (killed, or its tracking server was down just
    then). Its end time becomes the time it was closed."""
    runs = [run for tag in ("stage", ITEM_OF_TAG)  # the stage's runs and their per-variant (budget, method) runs
            for run in client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.{tag} = "
                                                           f"'{stage}' and tags.{PROJECT_TAG} = '{project_key(root)}'")]
    for run in runs:
        client.set_tag(run.info.run_id, CLOSED_LATE_TAG, reason)
        client.set_terminated(run.info.run_id, status="FAILED")
    return [run.info.run_id for run in runs]


def experiment_name() -> str:
    """MLFLOW_EXPERIMENT_NAME if set, else 'groundwork'."""
    return os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT


def ensure_experiment(client: Any, root: Path | None = None) -> str:
    """The experiment's id, creating it when missing: artifacts in the project's mlartifacts/ for a SQLite store;
    a tracking server (http) picks its own artifact root, e.g. its `--artifacts-destination`, served through it.
    It opens in the UI as model training, with a description (EXPERIMENT_TAGS), also when created before."""
    name = experiment_name()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        for key, value in EXPERIMENT_TAGS.items():
            if key not in experiment.tags:  # a description someone edited in the UI stays theirs
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    uri = tracking_uri(root)
    location = ((root or Path.cwd()).resolve() / ARTIFACTS_DIR).as_uri() if uri.startswith("sqlite:") else None
    return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)


def git_tags(root: Path | None = None) -> dict[str, str]:
    """The git commit and whether the work tree differs from it; empty outside a git repository."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git_commit": commit, "git_dirty": str(dirty).lower(), "mlflow.source.git.commit": commit}


def flow_tags() -> dict[str, str]:
    """The Prefect flow run and the DVC experiment this process belongs to, when there are."""
    keys = {FLOW_RUN_ID_ENV: "prefect_flow_run_id", FLOW_RUN_NAME_ENV: "prefect_flow_run_name",
            DVC_EXPERIMENT_ENV: "dvc_experiment"}
    return {tag: os.environ[env] for env, tag in keys.items() if os.environ.get(env)}


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the key style of DVC params and MLflow metrics."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def _pip_requirements(flavor: Any) -> list[str]:
    """What a model of `flavor` (mlflow.pytorch, mlflow.onnx) needs to run and no more, pinned to this
    environment: an int8 ONNX model needs ONNX Runtime and numpy, not a multi-gigabyte torch. Stated, not
    inferred: MLflow's inference imports the model in a subprocess, seconds per model."""
    return [*flavor.get_default_pip_requirements(), f"numpy=={np.__version__}"]


class MlflowTracker(MlflowRegistry):
    """Records into the active MLflow run of this process (stage processes are single-threaded), and reaches the
    registry through MlflowRegistry."""

    def __init__(self, mlflow_module: Any) -> None:
        super().__init__(mlflow_module)
        self._datasets: dict[str, Any] = {}  # name -> the MLflow dataset log_dataset logged, for model metrics
        # through the client and not mlflow.log_metrics: that links a metric without a model to every model the
        # run logged at the same step, so each model would carry every other's scores
        self.metrics = MetricWriter(mlflow_module.MlflowClient(), mlflow_module.active_run())

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics named as metric_names says, at an epoch `step` where there is one."""
        self.metrics.log({key: [(step or 0, value)] for key, value in metrics.items()})

    def log_metrics_json(self, metrics: Mapping[str, Any]) -> None:
        """Log the numbers of a stage's metrics JSON under their paths (metric_names)."""
        self.metrics.log(metric_points(metrics))

    def log_series(self, series: Mapping[str, Sequence[float]]) -> None:
        """Log each metric's values at steps 0, 1, ... in batched requests (hundreds of steps, one call)."""
        self.metrics.log({key: list(enumerate(values)) for key, values in series.items()})

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Copy a file into the run's artifacts."""
        self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def _signature(self, example: np.ndarray, output: np.ndarray) -> Any:
        from mlflow.models import infer_signature
        return infer_signature(example, output)

    def log_torch_model(self, model: torch.nn.Module, name: str, example: np.ndarray) -> None:
        """Log a PyTorch model with its signature and an input example."""
        # contiguous weights: MLflow's serialiser warns about (and mishandles) channels_last storage
        model = model.eval().cpu().to(memory_format=torch.contiguous_format)
        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        self._mlflow.pytorch.log_model(model, name=name, signature=self._signature(example, output),
                                       input_example=example,
                                       pip_requirements=_pip_requirements(self._mlflow.pytorch))

    def log_pyfunc_model(self, spec: Mapping[str, Any]) -> str | None:
        """Log a pyfunc model as mlflow.pyfunc.log_model's keyword arguments `spec` say; return its id."""
        return self._mlflow.pyfunc.log_model(**spec).model_id

    def find_logged_model(self, tags: Mapping[str, str]) -> str | None:
        """The id of the latest model logged in this experiment with all of `tags`; None when there is none."""
        experiment = self._mlflow.active_run().info.experiment_id
        found = self._mlflow.search_logged_models(
            experiment_ids=[experiment], filter_string=" AND ".join(f"tags.{k} = '{v}'" for k, v in tags.items()),
            order_by=[{"field_name": "creation_time", "ascending": False}], max_results=1, output_format="list")
        return found[0].model_id if found else None

    def log_model_metrics(self, model_id: str, metrics: Mapping[str, float], dataset: str | None) -> None:
        """Log metrics measured on one model, linked to it and to the dataset `dataset` this run logged: the
        Models tab then shows each model with its own scores. Keys are routed as metric_names says: a variant's
        `variants.<name>.accuracy` is `accuracy` of that variant's own child run and of its model."""
        for run_id, keys in self.metrics.destinations({k: [(0, v)] for k, v in metrics.items()}).items():
            if keys:
                self._mlflow.log_metrics({key: points[-1][1] for key, points in keys.items()}, run_id=run_id,
                                         model_id=model_id, dataset=self._datasets.get(dataset))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags."""
        self._mlflow.set_tags(dict(tags))

    def log_dataset(self, name: str, path: Path | str, digest: str, context: str) -> None:
        """Record a dataset file the stage read or wrote: an MLflow dataset input with the file's schema (each
        split's images and labels: dtype and shape) and profile (their shapes, so the row counts), and a
        full-digest tag. The whole file, whichever splits the stage used: MLflow keeps one dataset per name and
        digest in an experiment, described as it was first logged."""
        from mlflow.data import from_numpy
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        with warnings.catch_warnings():  # MLflow registers its local source twice and warns about it
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(Path(path).resolve()))
        # MLflow stores at most 36 characters of a dataset digest; the tag keeps all 64. Passing the digest also
        # spares MLflow hashing the arrays again.
        arrays = read_npz(Path(path))  # read again, as a whole: a few MB, and the stage has just read it
        logged = from_numpy({key: value for key, value in arrays.items() if key.endswith("_images")},
                            targets={key: value for key, value in arrays.items() if key.endswith("_labels")},
                            source=source, name=name, digest=digest[:32])
        self._mlflow.log_input(logged, context=context)
        self._mlflow.set_tag(f"data_digest.{name}", digest)
        self._datasets[name] = logged


@contextmanager
def stage_run(stage: str, params: Mapping[str, Any],
              recording: TrackingParams | None = None) -> Iterator[MlflowTracker]:
    """An MLflow run for one stage execution, nested under the flow's run when there is one; with
    `recording.system_metrics`, MLflow samples the machine's use every `system_metrics_interval` seconds."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    experiment_id = ensure_experiment(client)
    # DVC write-locks a stage's outputs while its command runs: one run of a stage at a time in a workspace
    for stale in close_stale_runs(client, experiment_id, stage=stage, reason=(
            f"still RUNNING when the next run of stage '{stage}' started in this project: its process ended "
            "without closing it (killed, or the tracking server was unreachable then)")):
        log.warning("MLflow run %s of an earlier '%s' was still RUNNING: closed as FAILED (tag %s)", stale, stage,
                    CLOSED_LATE_TAG)
    parent = os.environ.get(PARENT_RUN_ENV) or None
    flow = flow_tags()
    name = f"{stage} · {flow['prefect_flow_run_name']}" if "prefect_flow_run_name" in flow else stage
    tags = {"stage": stage, "dvc_stage": stage, PROJECT_TAG: project_key(), **git_tags(), **flow,
            STAGE_START_TAG: "warm" if os.environ.get(STARTED_WARM_ENV) else "cold"}
    system_metrics = recording is not None and recording.system_metrics
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(recording.system_metrics_interval)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=name, parent_run_id=parent, tags=tags,
                           log_system_metrics=system_metrics)
    tracker = MlflowTracker(mlflow)
    try:
        log.info("MLflow run %s (%s) in %s", run.info.run_id, name, tracking_uri())
        mlflow.log_params({k: str(v) for k, v in flatten(params).items()})
        yield tracker
    except BaseException:
        # A stage that fails is often stopped twice (torchrun sends SIGTERM to every rank once one dies): a
        # signal raised inside end_run would leave the run RUNNING for good, so it waits until the run is closed.
        with termination_deferred():
            tracker.metrics.close("FAILED")
            mlflow.end_run("FAILED")
        raise
    tracker.metrics.close("FINISHED")
    mlflow.end_run("FINISHED")


@contextmanager
def termination_deferred() -> Iterator[None]:
    """Hold SIGTERM back for the duration (Python handlers live in the main thread only); one that arrived
    meanwhile is raised again after, for whatever handler was there before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: arrived.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if arrived:
            signal.raise_signal(signal.SIGTERM)
