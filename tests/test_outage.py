"""A tracking server that dies in the middle of a stage, with a real `mlflow server`: the stage ends within the
bounded retry window (groundwork.tracking.runs.HTTP_DEFAULTS), naming the server, DVC records nothing, the resume
file stays; once the server is back, the rerun continues from it and closes the killed attempt's run. (The flow's side,
a parent run a dead server left RUNNING, is in tests/test_pipeline.py, beside its Prefect test server.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from flows.repro import stage_environment
from groundwork.forkserver import SERVER_ENV
from groundwork.project import copy_project, tiny_params_dict
from groundwork.tracking.runs import CLOSED_LATE_TAG, PROJECT_TAG, project_key
from tests.helpers import start_tracking_server, stop_server, wait_until_healthy

pytestmark = [pytest.mark.subprocess, pytest.mark.server]

EPOCHS = 20  # tiny pretrain epochs take 0.2 to 0.5 s: the kill lands with most of them still to go
KILL_TO_EXIT_LIMIT_S = 120  # the bound a stage must end within once its tracking server is gone
PRETRAIN_OUTPUTS = ("models/pretrained.pt", "reports/pretrain_history.csv", "reports/pretrain.json")


def dvc_command(project: Path, env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=timeout)


def cache_files(project: Path) -> set[str]:
    return {str(path.relative_to(project)) for path in (project / ".dvc" / "cache").rglob("*") if path.is_file()}


def pretrain_runs(client: MlflowClient) -> list[Any]:
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return client.search_runs(experiments, "tags.stage = 'pretrain'", order_by=["start_time ASC"])


def steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, "val_accuracy"))


def test_a_server_killed_mid_pretrain_fails_the_stage_in_time_and_the_rerun_resumes(tmp_path: Path) -> None:
    folder = tmp_path / "server"
    folder.mkdir()
    process, server = start_tracking_server(folder)  # it starts while the project is copied
    project = copy_project(tmp_path / "project", tiny_params_dict(pretrain={"epochs": EPOCHS}))
    # no MLflow settings from outside: the stages' own bounded retry window is what is measured; the stages start
    # warm (forked from the suite's stage server), which runs each as a cold one runs it (tests/test_forkserver.py)
    env = {k: v for k, v in stage_environment({}).items()
           if k == SERVER_ENV or not k.startswith(("GROUNDWORK_", "MLFLOW_", "DVC_"))}
    env["MLFLOW_TRACKING_URI"] = server.url
    try:
        wait_until_healthy(process, server.url, folder / "server.log")
        upstream = dvc_command(project, env, "repro", "ingest", "augment")
        assert upstream.returncode == 0, upstream.stderr[-3000:]
        lock_before, cache_before = (project / "dvc.lock").read_text(), cache_files(project)

        client = MlflowClient(server.url)
        with (tmp_path / "killed.out").open("w") as out, (tmp_path / "killed.err").open("w") as err:
            victim = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "pretrain"], cwd=project, env=env,
                                      stdout=out, stderr=err, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not ((runs := pretrain_runs(client)) and steps(client, runs[0].info.run_id)):
                assert victim.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.err").read_text()
                time.sleep(0.2)
            os.killpg(process.pid, signal.SIGKILL)  # the server and its workers, at once
            process.wait()
            killed = time.monotonic()
            victim.wait(timeout=KILL_TO_EXIT_LIMIT_S + 60)
            seconds = time.monotonic() - killed
        finally:
            if victim.poll() is None:
                os.killpg(victim.pid, signal.SIGKILL)
                victim.wait()
        stderr = (tmp_path / "killed.err").read_text()
        print(f"pretrain ended {seconds:.1f} s after its tracking server was killed")
        assert seconds < KILL_TO_EXIT_LIMIT_S, stderr[-3000:]
        assert victim.returncode != 0, stderr[-3000:]
        assert f"pretrain failed: MLflow tracking at {server.url} is unreachable or refused the request" in stderr
        assert f"pretrain epoch {EPOCHS}/{EPOCHS}" not in stderr, "the kill came too late: training had ended"
        # the same server again, same port and store, starting while DVC's state is checked
        process, _ = start_tracking_server(folder, port=int(server.url.rsplit(":", 1)[1]))

        # DVC recorded nothing of the failed run, and the training state of its last good epoch is kept
        assert "pretrain" in json.loads(dvc_command(project, env, "status", "--json").stdout)
        assert (project / "dvc.lock").read_text() == lock_before
        assert "pretrain" not in yaml.safe_load(lock_before)["stages"]
        assert not any((project / name).exists() for name in PRETRAIN_OUTPUTS)
        assert cache_files(project) == cache_before, "nothing of the failed run went into DVC's cache"
        assert (project / ".resume" / "pretrain.pt").exists()
        wait_until_healthy(process, server.url, folder / "server.log")
        [killed_run] = pretrain_runs(client)
        assert killed_run.info.status == "RUNNING", "the stage could not close its run: the server was down"

        rerun = dvc_command(project, env, "repro", "pretrain")
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        resumed = re.search(r"pretrain: resuming after epoch (\d+)", rerun.stderr)
        assert resumed is not None and "pretrain epoch 1/" not in rerun.stderr, rerun.stderr[-3000:]
        epoch = int(resumed.group(1))
        assert 1 <= epoch <= max(steps(client, killed_run.info.run_id))
        # tracking back in step: the killed attempt's run closed late as FAILED, the rerun's has the epochs after
        assert f"MLflow run {killed_run.info.run_id} of an earlier 'pretrain' was still RUNNING" in rerun.stderr
        old, new = pretrain_runs(client)
        assert old.info.status == "FAILED" and CLOSED_LATE_TAG in old.data.tags
        assert new.info.status == "FINISHED" and new.data.tags[PROJECT_TAG] == project_key(project)
        assert steps(client, new.info.run_id) == list(range(epoch + 1, EPOCHS + 1))
    finally:
        stop_server(process)
    assert "pretrain" in yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert all((project / name).exists() for name in PRETRAIN_OUTPUTS)
    assert not (project / ".resume" / "pretrain.pt").exists(), "a finished run leaves no resume state"
