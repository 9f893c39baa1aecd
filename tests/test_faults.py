"""Faults at the stage entry points, each in a real subprocess as DVC runs it: bad data, a killed stage,
divergence, and an unreachable tracking server. (Bad params: test_params.py; flows: test_pipeline.py.)"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from groundwork.entrypoint import EXIT_TRANSIENT
from groundwork.params import Params
from groundwork.project import ROOT, copy_project, project_params_dict, tiny_params_dict
from groundwork.tracking.outcome import OUTCOME_DIR_ENV, read_outcome
from tasks import augment
from tests.helpers import (
    change_params,
    dvc,
    free_port,
    output_digests,
    start_tracking_server,
    stop_server,
    wait_until_healthy,
)

pytestmark = [pytest.mark.subprocess]


def stage_command(stage: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"tasks.{stage}", "--params", "params.yaml", *args]


def environment(workdir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
            OUTCOME_DIR_ENV: str(workdir / "outcomes"), **extra}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(pretrain={"epochs": 6})))
    return tmp_path


def test_corrupt_input_is_named_and_nothing_is_written(workdir: Path, tiny_data: dict[str, Path]) -> None:
    corrupt = workdir / "source.npz"
    corrupt.write_bytes(tiny_data["source"].read_bytes()[:5000])
    result = subprocess.run(stage_command("augment", "--source", str(corrupt), "--out", "aug.npz",
                                          "--preview", "preview.png", "--metrics", "augment.json"),
                            cwd=workdir, env=environment(workdir), capture_output=True, text=True)
    assert result.returncode == 1
    assert f"{corrupt}: corrupt or truncated data file" in result.stderr
    assert not any((workdir / name).exists() for name in ("aug.npz", "preview.png", "augment.json"))


def pretrain_args(source: Path, augmented: Path, tag: str) -> list[str]:
    return ["--train", str(augmented), "--source", str(source), "--model-out", f"{tag}.pt",
            "--history-out", f"{tag}.csv", "--metrics", f"{tag}.json", "--resume", f"resume/{tag}.pt"]


def test_killed_pretrain_resumes_and_ends_as_an_uninterrupted_run(workdir: Path, tiny_params: Params,
                                                                  tiny_data: dict[str, Path]) -> None:
    augmented = workdir / "augmented.npz"
    augment.run(tiny_params, source=tiny_data["source"], out=augmented, preview=workdir / "preview.png")
    env = environment(workdir)
    reference = subprocess.run(stage_command("pretrain", *pretrain_args(tiny_data["source"], augmented, "ref")),
                               cwd=workdir, env=env, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr

    command = stage_command("pretrain", *pretrain_args(tiny_data["source"], augmented, "run"))
    with subprocess.Popen(command, cwd=workdir, env=env, stderr=subprocess.PIPE, text=True) as victim:
        assert victim.stderr is not None
        for line in victim.stderr:
            if "pretrain epoch 3/6" in line:  # epochs 1-2 are saved; it is now inside epoch 4 or saving 3
                victim.send_signal(signal.SIGKILL)
                break
    assert victim.returncode == -signal.SIGKILL
    assert (workdir / "resume" / "run.pt").exists()
    assert not (workdir / "run.pt").exists() and not (workdir / "run.json").exists()

    rerun = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming after epoch" in rerun.stderr
    assert "pretrain epoch 1/6" not in rerun.stderr, "the rerun did not start over"
    assert json.loads((workdir / "run.json").read_text()) == json.loads((workdir / "ref.json").read_text())
    assert (workdir / "run.csv").read_text() == (workdir / "ref.csv").read_text()
    assert not (workdir / "resume" / "run.pt").exists(), "a finished run leaves no resume state"


def test_divergence_stops_the_stage_before_anything_is_saved(workdir: Path, tiny_data: dict[str, Path]) -> None:
    params = tiny_params_dict(pretrain={"optimizer": "momentum", "lr": 10.0, "weight_decay": 0.0,
                                        "schedule": "none", "augmentation": "none", "batch_size": 16})
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(stage_command("pretrain", *pretrain_args(tiny_data["source"], workdir / "x.npz", "d")),
                            cwd=workdir, env=environment(workdir), capture_output=True, text=True)
    assert result.returncode == 1
    assert "pretrain failed: pretrain: loss became" in result.stderr
    outcome = read_outcome(workdir / "outcomes", "pretrain")
    assert outcome is not None and outcome.kind == "failed", "a diverged run would diverge again: not transient"
    assert not any((workdir / name).exists() for name in ("d.pt", "d.csv", "d.json"))


def test_unreachable_tracking_fails_the_stage_at_its_start(workdir: Path) -> None:
    """A failure whose cause may pass: exit code 75 (EX_TEMPFAIL), and the outcome the flow reads says transient."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = environment(workdir, MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
                      MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5",
                      **{OUTCOME_DIR_ENV: str(workdir / "outcomes")})
    result = subprocess.run(stage_command("ingest", "--source-out", "s.npz", "--target-out", "t.npz",
                                          "--metrics", "ingest.json"),
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_TRANSIENT == 75
    assert f"ingest failed: MLflow tracking at {uri} is unreachable" in result.stderr
    assert not any((workdir / name).exists() for name in ("s.npz", "t.npz", "ingest.json"))
    outcome = read_outcome(workdir / "outcomes", "ingest")
    assert outcome is not None and (outcome.kind, outcome.exit_code) == ("transient", 75)


def test_a_full_disk_fails_the_stage_and_leaves_outputs_and_lock_as_they_were(tmp_path: Path) -> None:
    """A file size limit (RLIMIT_FSIZE: a write past it fails with EFBIG, as one on a full disk fails with ENOSPC)
    set on the stage as DVC runs it, smaller than the model it writes. Tracking goes to a real `mlflow server` in
    another process (outside the limit), as a team's would."""
    # the default architecture: its model (1.9 MB) is larger than the files DVC itself writes, which a limit below
    # them would fail first ("disk I/O error" from its SQLite state)
    project = copy_project(tmp_path / "project", tiny_params_dict(model=project_params_dict()["model"]))
    (tmp_path / "tracking").mkdir()
    server_process, server = start_tracking_server(tmp_path / "tracking")
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        wait_until_healthy(server_process, server.url, tmp_path / "tracking" / "server.log")
        subprocess.run([sys.executable, "-m", "dvc", "repro", "pretrain"], cwd=project, env=env, check=True,
                       capture_output=True)
        before, lock = output_digests(project), (project / "dvc.lock").read_bytes()
        cache = sorted(path.name for path in (project / ".dvc" / "cache").rglob("*") if path.is_file())
        limit = (project / "models" / "pretrained.pt").stat().st_size // 2

        def limited() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        change_params(project, "pretrain", epochs=3)  # pretrain must run again
        # the stage's command as dvc.yaml gives it, with the last run's outputs in place
        command = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["pretrain"]["cmd"]
        result = subprocess.run(command, shell=True, cwd=project, env=env, preexec_fn=limited, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 1, result.stderr
        # the first write past the limit: the training state after epoch 1 (the model and its optimizer's moments)
        assert "pretrain failed: .resume/pretrain.pt: not written: File too large" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert output_digests(project) == before, "the last run's outputs are untouched, no temporary file is left"
        assert not list(project.rglob(".*.tmp-*")), "no temporary file is left anywhere"

        # the same through `dvc repro`, which removes a stage's outputs before running it (they stay in its cache)
        repro = subprocess.run([sys.executable, "-m", "dvc", "repro", "pretrain"], cwd=project, env=env,
                               preexec_fn=limited, capture_output=True, text=True, timeout=300)
        assert repro.returncode != 0
        assert "not written: File too large" in repro.stdout + repro.stderr
        assert (project / "dvc.lock").read_bytes() == lock, "dvc.lock records nothing of the failed run"
        assert sorted(path.name for path in (project / ".dvc" / "cache").rglob("*") if path.is_file()) == cache
        dvc(project, "checkout", "pretrain")  # what the flow does after a failed stage (docs/faults.md, 7b)
        assert output_digests(project) == before
    finally:
        stop_server(server_process)


def test_an_unreachable_dask_scheduler_fails_the_budget_stage_naming_it_with_nothing_written(
        workdir: Path, tiny_data: dict[str, Path], tiny_pretrained: dict[str, object]) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    result = subprocess.run(stage_command("budget", "--pretrained", str(tiny_pretrained["model"]), "--target",
                                          str(tiny_data["target"]), "--table-out", "budget.csv", "--curve-out",
                                          "curve.png", "--metrics", "budget.json"),
                            cwd=workdir, env=environment(workdir, DASK_SCHEDULER_ADDRESS=address), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert f"budget failed: the Dask scheduler at {address} (DASK_SCHEDULER_ADDRESS" in result.stderr
    assert "Traceback" not in result.stderr, "a known failure is one line"
    assert not any((workdir / name).exists() for name in ("budget.csv", "curve.png", "budget.json"))
    assert read_outcome(workdir / "outcomes", "budget").kind == "failed"
