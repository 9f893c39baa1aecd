"""The flow side of MLflow: the flow run's parent run, opened and closed explicitly by id (MLflow's active run is
thread-local and Prefect runs tasks in threads), earlier flows' parent runs left RUNNING closed as FAILED, and tags
added to a stage's run once the flow knows more."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from groundwork.tracking.runs import (
    PROJECT_TAG,
    close_stale_runs,
    ensure_experiment,
    git_tags,
    project_key,
    tracking_uri,
)


def start_parent_run(*, run_name: str, tags: Mapping[str, str], root: Path | None = None,
                     kind: str = "pipeline") -> str:
    """Create the flow's MLflow run explicitly (no thread-local active run) and return its id; `kind` (pipeline,
    adaptive) is its `stage` tag, as a stage's name is its run's."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(root))
    run = client.create_run(ensure_experiment(client, root), run_name=run_name,
                            tags={"stage": kind, PROJECT_TAG: project_key(root), **git_tags(root), **tags})
    return run.info.run_id


def close_stale_parent_runs(*, kind: str, root: Path | None = None) -> list[str]:
    """Close as FAILED the parent runs of `kind` of this project still RUNNING, and return their ids. Call it
    holding the project's flow lock (flows/lock.py), before start_parent_run: a flow holds the lock for its whole
    run, so these are earlier flows' runs, left RUNNING when the tracking server was down as the flow ended (or
    the flow was killed)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(root))
    return close_stale_runs(client, ensure_experiment(client, root), stage=kind, root=root, reason=(
        f"still RUNNING when the next {kind} flow run started on this project, holding its lock: the flow that "
        "started it ended without closing it (the tracking server was unreachable then, or the flow was killed)"))


def experiment_of(run_id: str, *, root: Path | None = None) -> str:
    """The experiment id a run belongs to."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri(root)).get_run(run_id).info.experiment_id


def tag_stage_run(parent_run_id: str, stage: str, tags: Mapping[str, str], *, root: Path | None = None) -> None:
    """Add tags to the newest run of `stage` under the flow's run (facts known only once the stage ended)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(root))
    experiment = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.stage = '{stage}'",
                              order_by=["start_time DESC"], max_results=1)
    for key, value in tags.items():
        for run in runs:
            client.set_tag(run.info.run_id, key, value)


def end_parent_run(run_id: str, *, status: str, metrics: Mapping[str, float], tags: Mapping[str, str],
                   root: Path | None = None) -> None:
    """Record the flow's summary on its MLflow run and close it with FINISHED or FAILED."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(root))
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status=status)
