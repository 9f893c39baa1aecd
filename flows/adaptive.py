"""The adaptive-learning flow: one iteration of the loop that keeps the champion current. It writes the champion
pointer from the Model Registry (models/champion: the served champion's fp32 weights, form and the labels it
learnt) and records it with what arrived (`dvc add data/incoming data/labels models/champion`: batches, labels and
champion become versioned data), then runs the stages of
adaptive/dvc.yaml one Prefect task each through `dvc repro`, under one MLflow parent run with a child per stage,
as the pipeline flow does:

    monitor  drift tests of every batch through the champion (alarm: KS on softmax outputs or MMD on embeddings)
    ask      on an alarm, the images the champion is least sure of, as a queue (reports/adaptive/queue/)
    adapt    with enough labels the champion lacks, a challenger fine-tuned from it with replay, served in its
             form, gated against forgetting

The rules are params (adaptive.monitor.alarm_on, adaptive.adapt.min_labels); a stage with nothing to do says
so and writes empty outputs. One run per project at a time, shared with the pipeline flow's lock."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.lock import pipeline_lock
from flows.parent_run import experiment_of
from flows.pipeline import run_tracked_stages
from flows.repro import StageResult, stage_environment, stage_plan
from flows.summary import adaptive_headline, adaptive_markdown, mlflow_address
from groundwork.adaptive.champion import POINTER
from groundwork.params import load_params
from groundwork.tracking.runs import tracking_uri

FLOW_NAME = "groundwork-adaptive"
GRAPH = "adaptive/dvc.yaml"
BASE_MODEL = "models/transfer.pt"  # the pipeline's fp32 model: the loop needs a pipeline that ran
# what comes from outside the graph, recorded with `dvc add`, never a stage output: arrivals, labels, the champion
DATA = ("data/incoming", "data/labels", str(POINTER))


@task(task_run_name="record arrivals and champion")
def record_arrivals(root: str) -> str:
    """Write the champion pointer from the registry, then `dvc add` it with the incoming batches and the labels
    given back, so the loop's inputs are versioned data that `dvc repro adaptive/dvc.yaml` replays and `dvc push`
    shares."""
    # the command a user runs before `dvc repro adaptive/dvc.yaml` by hand, in its own process: MLflow's tracking
    # URI is process-wide state, and this flow may share its process with other projects' flows
    pointed = subprocess.run([sys.executable, "-m", "groundwork.adaptive.champion"], cwd=root,
                             env=stage_environment({}), capture_output=True, text=True)
    if pointed.returncode != 0:
        raise RuntimeError(f"the champion pointer: {pointed.stderr.strip()[-2000:]}")
    get_run_logger().info(pointed.stdout.strip())
    for folder in DATA[:2]:
        (Path(root) / folder).mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "dvc", "add", "--quiet", *DATA], cwd=root,
                            env=stage_environment({}), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`dvc add {' '.join(DATA)}` exited {result.returncode}: "
                           f"{result.stderr.strip()[-2000:]}")
    counts = {folder: sum(1 for p in (Path(root) / folder).iterdir() if not p.name.startswith("."))
              for folder in DATA[:2]}
    get_run_logger().info("recorded %s", ", ".join(f"{folder}: {n} entries" for folder, n in counts.items()))
    return str(counts)


@flow(name=FLOW_NAME, log_prints=True)
def adaptive_loop(project_dir: str = ".") -> list[StageResult]:
    """One iteration of the adaptive loop on the project: record arrivals, monitor, ask, adapt (see the module)."""
    root = Path(project_dir).resolve()
    load_params(root / "params.yaml")  # bad params stop the flow here, before anything is recorded or run
    if not (root / BASE_MODEL).exists():
        raise FileNotFoundError(f"{root / BASE_MODEL}: no model to watch yet; run the pipeline first (`make run`)")
    with pipeline_lock(root):
        record_arrivals(str(root))

        def publish(results: list[StageResult], status: str, parent: str) -> None:
            address = mlflow_address(tracking_uri(root), experiment_of(parent, root=root), parent)
            create_markdown_artifact(adaptive_markdown(root, results, status=status, mlflow_url=address),
                                     key="adaptive-summary", description="drift, labelling queue, challenger decision")

        return run_tracked_stages(root, stage_plan(root, GRAPH), kind="adaptive", publish=publish,
                                  headline=adaptive_headline, dvc_file=GRAPH)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one iteration of the loop now, from the command line."""
    parser = argparse.ArgumentParser(prog="python -m flows.adaptive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-dir", default=".", help="the DVC project to run (holds adaptive/dvc.yaml)")
    args = parser.parse_args(argv)
    state = adaptive_loop(project_dir=args.project_dir, return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
