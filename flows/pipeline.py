"""The pipeline flow: one Prefect task per DVC stage, in DVC's order, each run through `dvc repro`, so a flow
run and a plain `dvc repro` share one cache and one dvc.lock. The flow owns one MLflow parent run; every stage
records a child run under it. With `push`, a successful run ends with `dvc push` to the default DVC remote."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import State

from flows.lock import pipeline_lock
from flows.parent_run import (
    close_stale_parent_runs,
    end_parent_run,
    experiment_of,
    start_parent_run,
    tag_stage_run,
)
from flows.relay import relay
from flows.repro import (
    RAN,
    RESTORED,
    SKIPPED,
    StageFailed,
    StagePlan,
    StageResult,
    default_remote,
    lock_hash,
    push_outputs,
    repro_stage,
    run_experiment,
    stage_environment,
    stage_name,
    stage_plan,
    stages_to_run,
)
from flows.summary import Headline, mlflow_address, pipeline_headline, summary_markdown, variant_rows
from groundwork import forkserver
from groundwork.params import read_raw_params, with_overrides
from groundwork.plot_page import write_plot_page
from groundwork.tracking.runs import (
    CLOSED_LATE_TAG,
    FLOW_RUN_ID_ENV,
    FLOW_RUN_NAME_ENV,
    PARENT_RUN_ENV,
    tracking_uri,
)

FLOW_NAME = "groundwork-pipeline"
Publish = Callable[[list[StageResult], str, str], None]  # (results, status, MLflow parent run id)


def may_pass(task: Any, task_run: Any, state: State) -> bool:
    """Prefect's retry condition: retry a stage only when its failure may be transient (see StageFailed)."""
    failure = state.result(raise_on_failure=False)
    return not isinstance(failure, StageFailed) or failure.transient


@task(task_run_name="{stage}", retries=1, retry_delay_seconds=5, retry_condition_fn=may_pass)
def run_stage(stage: str, root: str, env: dict[str, str], outcomes: str) -> StageResult:
    """One DVC stage; DVC decides whether it must run. Retried once when the failure may be transient; bad
    params, bad data or a diverged run fail at once, with the stage's message."""
    logger = get_run_logger()
    result = repro_stage(stage, root=Path(root), env=env, echo=relay(logger),
                         outcomes=Path(outcomes))
    if result.status == RAN:
        logger.info("stage '%s' ran in %.1f s", stage, result.seconds or 0.0)
    elif result.status == RESTORED:
        logger.info("stage '%s' restored: DVC's run cache holds outputs for these deps and params", stage)
    else:
        logger.info("stage '%s' skipped: DVC found its deps, params and outs unchanged", stage)
    return result


@task(task_run_name="experiment {name}")
def run_dvc_experiment(name: str, overrides: dict[str, Any], stages: list[str], root: str,
                       env: dict[str, str], outcomes: str) -> list[StageResult]:
    """The whole graph as one DVC experiment with the overrides, outside the working tree."""
    logger = get_run_logger()
    return run_experiment(name, overrides, stages, root=Path(root), env=env, echo=relay(logger),
                          outcomes=Path(outcomes))


@task(task_run_name="dvc push", retries=1, retry_delay_seconds=10)
def dvc_push(root: str, env: dict[str, str]) -> list[str]:
    """Upload the run's data and models to the default DVC remote. Retried once: remotes are often remote."""
    logger = get_run_logger()
    remote = default_remote(Path(root), env)
    pushed = push_outputs(root=Path(root), env=env, echo=relay(logger))
    if pushed:
        logger.info("pushed %d path(s) to DVC remote '%s': %s", len(pushed), remote, ", ".join(pushed))
    else:
        logger.info("DVC remote '%s' already held every output of this run", remote)
    return pushed


@flow(name=FLOW_NAME, log_prints=True)
def pipeline(project_dir: str = ".", overrides: dict[str, Any] | None = None, push: bool = False) -> list[StageResult]:
    """Run every stage of the project's dvc.yaml through DVC, in DVC's order, tracked in MLflow.

    `overrides` ({"pretrain.epochs": 3}) runs the graph as a DVC experiment (`dvc exp run --temp -S ...`,
    named after the flow run) instead: params.yaml in the working tree is never edited. `push` ends a
    successful run with `dvc push` to the project's default DVC remote, so that another machine can
    `dvc pull` the data and models. One run per project at a time: a second one is refused at its start
    (PipelineBusy), changing nothing.
    """
    root = Path(project_dir).resolve()
    # bad params, overrides or push settings stop the flow here, before any stage or run starts
    with_overrides(read_raw_params(root / "params.yaml"), overrides or {}, source=str(root / "params.yaml"))
    if push and overrides:
        raise ValueError("push: a run with overrides is a DVC experiment outside the working tree, and `dvc push` "
                         "uploads the working tree's outputs; share an experiment with "
                         "`dvc exp push <git remote> <experiment>` instead")
    env = stage_environment({})
    if push:
        default_remote(root, env)  # no default remote: say so now, not after an hour of training
    with pipeline_lock(root):
        results = _run_stages(root, overrides or {})
        write_plot_page(root)  # `dvc plots show` draws offline (.dvc/config's html_template)
        if push:
            dvc_push(str(root), env)
        return results


def _run_stages(root: Path, overrides: dict[str, Any]) -> list[StageResult]:
    """The pipeline's stages (or one experiment of them), tracked, with the pipeline's summary artifacts."""
    def publish(results: list[StageResult], status: str, parent: str) -> None:
        publish_artifacts(root, results, status=status, parent_run_id=parent,
                          experiment=str(flow_run.name) if overrides else None)

    results = run_tracked_stages(root, stage_plan(root), kind="pipeline", overrides=overrides, publish=publish,
                                 headline=pipeline_headline)
    get_run_logger().info("metrics: reports/*.json (`dvc metrics show`); models: models/; plots: `dvc plots show`; "
                          "MLflow: `make ui` (store %s)", tracking_uri(root))
    return results


def run_tracked_stages(root: Path, plan: StagePlan, *, kind: str, publish: Publish,
                       headline: Callable[[Path], Headline], overrides: dict[str, Any] | None = None,
                       dvc_file: str = "dvc.yaml") -> list[StageResult]:
    """The stages of `plan` (those of `dvc_file`), one task each (or, with overrides, one experiment), under one
    MLflow parent run named after `kind` and closed FINISHED or FAILED, with `headline(root)`'s metrics and tags
    when it finished in the working tree; `publish(results, status, parent run id)` ends it either way. Each
    stage's task waits on the tasks of the stages it depends on (DVC's edges, so Prefect's graph draws them); they
    still run one at a time, as DVC's repository lock requires."""
    stages = plan.order
    logger = get_run_logger()
    logger.info("stages in DVC's order: %s", " -> ".join(stages))
    flow_ids = {FLOW_RUN_ID_ENV: str(flow_run.id), FLOW_RUN_NAME_ENV: str(flow_run.name)}
    for stale in close_stale_parent_runs(kind=kind, root=root):  # the caller holds the project lock
        logger.warning("MLflow parent run %s of an earlier flow run was still RUNNING: closed as FAILED (tag %s)",
                       stale, CLOSED_LATE_TAG)
    parent = start_parent_run(run_name=f"{kind} · {flow_run.name}", root=root, kind=kind,
                              tags={"prefect_flow_run_id": flow_ids[FLOW_RUN_ID_ENV],
                                    "prefect_flow_run_name": flow_ids[FLOW_RUN_NAME_ENV]})
    logger.info("MLflow parent run %s in %s", parent, tracking_uri(root))
    # the store is named explicitly: an experiment runs its stages in a temporary copy of the project
    env = stage_environment({PARENT_RUN_ENV: parent, "MLFLOW_TRACKING_URI": tracking_uri(root), **flow_ids})
    results: list[StageResult] = []
    status = "FAILED"
    # where each stage's entry point records how it ended (groundwork.tracking.outcome)
    outcomes = tempfile.mkdtemp(prefix="groundwork-outcomes-")
    try:
        pending = stages if overrides else stages_to_run(root, env, dvc_file)
        # the stages that run start in processes forked from one warm interpreter (groundwork.forkserver)
        with forkserver.running(logger.info) if pending else nullcontext({}) as warm:
            env |= warm
            if overrides:
                results = run_dvc_experiment(str(flow_run.name), overrides, stages, str(root), env, outcomes)
            ran: dict[str, PrefectFuture[StageResult]] = {}  # the task run of each stage that got one
            for stage in [] if overrides else stages:
                if stage not in pending:  # `dvc repro` would skip it: no DVC process started to find that out
                    logger.info("stage '%s' skipped: `dvc status` finds it and every stage it depends on unchanged",
                                stage)
                    results.append(StageResult(stage=stage, status=SKIPPED, seconds=0.0))
                    continue
                # submitted with the task runs it depends on, and waited for before the next: Prefect records the
                # edges (a direct call with States also linked the stage before, through the strings of its result)
                ran[stage] = run_stage.submit(stage, str(root), env, outcomes,
                                              wait_for=_nearest_task_runs(stage, plan, ran))
                results.append(ran[stage].result())  # a failed stage raises its StageFailed here
                if results[-1].status == RAN and (stage_hash := lock_hash(root, stage)) is not None:
                    # dvc.lock gets the stage's entry only after the stage succeeded: tag its run now
                    tag_stage_run(parent, stage_name(stage), {"dvc_lock_hash": stage_hash}, root=root)
        status = "FINISHED"
    finally:
        try:
            # the workspace's reports are this run's outputs only when it finished there (not in an experiment)
            metrics, tags = headline(root) if status == "FINISHED" and not overrides else ({}, {})
            end_parent_run(parent, status=status, root=root,
                           metrics={**metrics, **{f"stage_seconds.{stage_name(r.stage)}": r.seconds for r in results
                                                  if r.seconds is not None}},
                           tags={**tags, **{f"stage_status.{stage_name(r.stage)}": r.status for r in results}})
            publish(results, status, parent)
        except Exception as exc:
            if status == "FINISHED":
                raise
            # the stage's failure stays the flow's: a tracking server down now must not replace it (the parent
            # run left RUNNING is closed as FAILED when the next flow run starts)
            logger.error("closing MLflow parent run %s or publishing the summary failed too: %s", parent, exc)
        finally:
            shutil.rmtree(outcomes, ignore_errors=True)
    done = [r.stage for r in results if r.status == RAN]
    logger.info("done: %d stage(s) ran (%s), %d skipped", len(done), ", ".join(done) or "none",
                len(results) - len(done))
    return results


def _nearest_task_runs(stage: str, plan: StagePlan,
                       ran: dict[str, PrefectFuture[StageResult]]) -> list[PrefectFuture[StageResult]]:
    """The task runs `stage` waits on: those of the stages it depends on, and through a stage skipped without a task
    run, those of the stages that one depends on."""
    found: list[PrefectFuture[StageResult]] = []
    for dependency in plan.upstream[stage]:
        for future in [ran[dependency]] if dependency in ran else _nearest_task_runs(dependency, plan, ran):
            if future not in found:
                found.append(future)
    return found


def publish_artifacts(root: Path, results: list[StageResult], *, status: str, parent_run_id: str,
                      experiment: str | None) -> None:
    """The run's summary (markdown) and the model variants (table) as Prefect artifacts."""
    address = mlflow_address(tracking_uri(root), experiment_of(parent_run_id, root=root), parent_run_id)
    create_markdown_artifact(summary_markdown(root, results, status=status, mlflow_url=address, experiment=experiment),
                             key="pipeline-summary", description="stages, headline metrics, registry decision")
    rows = variant_rows(root) if experiment is None else []  # an experiment's outputs are not in the workspace
    if rows:
        create_table_artifact(rows, key="model-variants", description="every model variant on the target test split")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m flows.pipeline [options]` is `groundwork run [options]`."""
    from flows.cli import main as cli

    return cli(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
