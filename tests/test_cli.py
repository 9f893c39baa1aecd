"""The `groundwork` command: its subcommands, exit codes, and bad input answered in one line before anything
starts (no Prefect server, no DVC), as the installed console script runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.cli import EXIT_BAD_INPUT, parser
from groundwork.project import copy_project, tiny_params_dict
from tests.helpers import dvc

pytestmark = [pytest.mark.subprocess]
GROUNDWORK = Path(sys.executable).parent / "groundwork"  # the console script pyproject.toml installs
COMMANDS = ("run", "stage", "repro", "loop", "stream", "annotate", "ui", "serve", "rollback", "schedule", "schema")


def groundwork(*args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GROUNDWORK), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_every_subcommand_has_help_under_the_name_groundwork(capsys: pytest.CaptureFixture[str]) -> None:
    result = groundwork("--help")  # the installed console script; each subcommand's help from the same parser
    assert result.returncode == 0 and result.stdout.startswith("usage: groundwork ")
    for name in COMMANDS:
        assert name in result.stdout
        with pytest.raises(SystemExit) as exited:
            parser().parse_args([name, "--help"])
        assert exited.value.code == 0 and capsys.readouterr().out.startswith(f"usage: groundwork {name} ")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("cli"), tiny_params_dict())


HEAVY = ("torch", "mlflow", "prefect", "dvc")  # seconds to import each: none is needed to read or check params


def imported_packages(*args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """The command's result, and every top-level package it imported (Python's -X importtime list)."""
    result = subprocess.run([sys.executable, "-X", "importtime", str(GROUNDWORK), *args], cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    names = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
             if line.startswith("import time:")}
    return result, names


def test_help_imports_none_of_the_heavy_libraries() -> None:
    # the cause of `--help` answering at once; the time itself is measured in bench/
    for args in (("--help",), ("run", "--help"), ("serve", "--help")):
        result, imported = imported_packages(*args)
        assert result.returncode == 0 and "torch" not in result.stdout.split("usage:")[0]
        assert not imported & set(HEAVY), f"groundwork {' '.join(args)} imported {sorted(imported & set(HEAVY))}"
    assert "groundwork" in imported, "the import list is read: the project's own package is in it"


def test_bad_params_are_one_line_and_exit_2_before_prefect_starts(tmp_path: Path) -> None:
    bad = copy_project(tmp_path / "bad", tiny_params_dict(pretrain={"optimizer": "rmsprop"}))
    result, imported = imported_packages("run", "--project-dir", str(bad))
    assert result.returncode == EXIT_BAD_INPUT == 2
    assert "pretrain.optimizer: Input should be 'sgd'" in result.stderr
    assert "Traceback" not in result.stderr and "temporary server" not in result.stderr + result.stdout
    assert not imported & set(HEAVY), f"imported {sorted(imported & set(HEAVY))} before the params were checked"
    assert not (bad / "mlflow.db").exists() and not (bad / "dvc.lock").exists(), "nothing ran"


@pytest.mark.parametrize(("args", "message"), [
    (["run", "--set", "pretrain.epochs"], "--set 'pretrain.epochs': expected KEY=VALUE"),
    (["run", "--set", "pretrain.epoch=3"], "pretrain.epoch"),
    (["run", "--set", "pretrain.epochs=-3"], "pretrain.epochs: Input should be greater than or equal to 1 (got -3)"),
    (["stage", "distill"], "no stage 'distill'; the stages are ingest, augment, pretrain"),
])
def test_bad_input_exits_2_with_one_message(project: Path, args: list[str], message: str) -> None:
    written = (project / "params.yaml").read_bytes()
    result = groundwork(*args, "--project-dir", str(project))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (project / "dvc.lock").exists() and (project / "params.yaml").read_bytes() == written


def test_serve_without_a_champion_says_so_and_exits_1(tmp_path: Path) -> None:
    bare = copy_project(tmp_path / "bare", tiny_params_dict())
    result = groundwork("serve", "--project-dir", str(bare))
    assert result.returncode == 1, result.stderr
    assert f"{tiny_params_dict()['evaluate']['registered_model']} has no champion in sqlite:///" in result.stderr
    assert "run the pipeline first" in result.stderr and "Traceback" not in result.stderr


def test_an_unknown_command_is_argparse_s_exit_2() -> None:
    result = groundwork("train")
    assert result.returncode == 2 and "invalid choice: 'train'" in result.stderr


def test_one_stage_runs_through_dvc_and_is_recorded(project: Path) -> None:
    result = groundwork("stage", "ingest", "--project-dir", str(project), timeout=300)
    assert result.returncode == 0, result.stderr
    assert set(yaml.safe_load((project / "dvc.lock").read_text())["stages"]) == {"ingest"}
    assert "ingest" not in dvc(project, "status", "dvc.yaml:ingest")
    failed = groundwork("stage", "pretrain", "--project-dir", str(project), timeout=300)
    assert failed.returncode == 1, "its input (augment's output) is missing: DVC refuses, the command fails"


def command_line(process: Any) -> str:
    """A process's command line; empty for one that ended while it was being looked at (git, a short helper)."""
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return ""


@pytest.mark.server
def test_sigterm_stops_schedule_and_the_temporary_prefect_server_it_started(project: Path, tmp_path: Path) -> None:
    """`groundwork schedule` with no Prefect server configured starts a temporary one. SIGTERM (what a service
    manager sends), sent as soon as that server's process exists, before the runner takes signals over, stops the
    command and the server: no process of its tree is left."""
    import signal
    import time

    import psutil

    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")  # its database here, not in the home folder
    log = tmp_path / "schedule.log"
    with log.open("w") as output:
        process = subprocess.Popen([str(GROUNDWORK), "schedule", "--project-dir", str(project)], stdout=output,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        command, deadline = psutil.Process(process.pid), time.monotonic() + 180
        while not any("uvicorn" in command_line(child) for child in command.children(recursive=True)):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        tree = [command, *command.children(recursive=True)]
        process.send_signal(signal.SIGTERM)
        # 130: unwound as Ctrl-C (before the runner took over); 0: the runner's own graceful shutdown
        assert process.wait(timeout=60) in (0, 130), log.read_text()[-3000:]
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert alive == [], f"left running: {[child.cmdline()[:4] for child in alive]}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
