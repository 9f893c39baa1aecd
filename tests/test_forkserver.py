"""The warm stage server (groundwork.forkserver): a stage command handed to it runs in a process the server forks,
writes what a cold process writes, ends as a cold process ends (exit code, message, signal), and dies with its
command; without a server the command runs the stage itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from groundwork.forkserver import READY, SERVER_ENV
from groundwork.project import ROOT, tiny_params_dict
from groundwork.tracking.outcome import OUTCOME_DIR_ENV

pytestmark = [pytest.mark.subprocess, pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                                         reason="finds the forked stage through /proc (Linux)")]


def start_server(address: str) -> subprocess.Popen[str]:
    """A server started by hand, as the module's docstring says, so that the tests know its pid; returned once it
    listens (it may still be preloading)."""
    env = {k: v for k, v in os.environ.items() if k != SERVER_ENV}
    process = subprocess.Popen([sys.executable, "-m", "groundwork.forkserver", address], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == READY
    return process


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[str], str]]:
    address = str(tmp_path_factory.mktemp("server") / "socket")
    process = start_server(address)
    yield process, address
    process.terminate()
    process.wait(timeout=30)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:  # ended while being read
                continue
            if f"\nPPid:\t{pid}\n" in status:
                found.append(int(entry.name))
    return found


def command_line(pid: int) -> str:
    """The process's command line, empty when it has ended."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def workdir(folder: Path, **params: dict[str, object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(**params), sort_keys=False))
    return folder


def stage_env(folder: Path, address: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (SERVER_ENV, "MLFLOW_TRACKING_URI")}
    env |= {"PYTHONPATH": str(ROOT), OUTCOME_DIR_ENV: str(folder / "outcomes"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    return env | ({SERVER_ENV: address} if address else {})


def ingest(folder: Path, address: str | None, params: str = "params.yaml") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tasks.ingest", "--params", params, "--source-out", "source.npz",
                           "--target-out", "target.npz", "--metrics", "ingest.json"], cwd=folder,
                          env=stage_env(folder, address), capture_output=True, text=True, timeout=300)


def test_a_forked_stage_writes_what_a_cold_one_writes_and_fails_as_it_fails(
        server: tuple[subprocess.Popen[str], str], tmp_path: Path) -> None:
    _, address = server
    cold, warm = ingest(workdir(tmp_path / "cold"), None), ingest(workdir(tmp_path / "warm"), address)
    assert (cold.returncode, warm.returncode) == (0, 0), warm.stderr
    for name in ("source.npz", "target.npz"):
        assert (tmp_path / "warm" / name).read_bytes() == (tmp_path / "cold" / name).read_bytes(), name
    assert json.loads((tmp_path / "warm" / "ingest.json").read_text()) == json.loads(
        (tmp_path / "cold" / "ingest.json").read_text())
    for folder in ("cold", "warm"):  # each run says how its stage started
        client = MlflowClient(f"sqlite:///{tmp_path / folder / 'mlflow.db'}")
        [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert run.data.tags["stage_start"] == folder
    # bad params: the same one-line message and exit code 2, and nothing written
    bad = tiny_params_dict()
    bad["ingest"]["target"]["size"] = -1
    for folder in ("cold", "warm"):
        (tmp_path / folder / "bad.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    cold, warm = (ingest(tmp_path / "cold", None, "bad.yaml"), ingest(tmp_path / "warm", address, "bad.yaml"))
    assert cold.returncode == warm.returncode == 2
    assert warm.stderr.strip().splitlines()[-1] == cold.stderr.strip().splitlines()[-1]
    assert "ingest.target.size" in warm.stderr


def pretrain(folder: Path, address: str | None, *, ingested: bool = False) -> subprocess.Popen[str]:
    """A long tiny pretraining (no data augmentation needed: it trains on the source it is given), after an ingest
    unless `ingested`."""
    if not ingested:
        made = ingest(folder, os.environ.get(SERVER_ENV))  # the suite's own server, when there is one
        assert made.returncode == 0, made.stderr
    # by another name of the same interpreter where the venv has one, as the server (started by the console script's
    # python3) and DVC's `python` differ in a real run
    other_name = Path(sys.executable).with_name("python3")
    python = str(other_name) if other_name.exists() and other_name.name != Path(sys.executable).name else sys.executable
    return subprocess.Popen([python, "-m", "tasks.pretrain", "--params", "params.yaml", "--train",
                             "unused.npz", "--source", "source.npz", "--model-out", "model.pt", "--history-out",
                             "history.csv", "--metrics", "pretrain.json"], cwd=folder, env=stage_env(folder, address),
                            stderr=subprocess.PIPE, text=True)


def until_training(command: subprocess.Popen[str]) -> None:
    assert command.stderr is not None
    for line in command.stderr:
        if "pretrain epoch 1/" in line:
            return
    raise AssertionError(f"the stage ended before its first epoch: exit {command.wait()}")


LONG = {"pretrain": {"augmentation": "none", "epochs": 500}}


def test_the_stage_runs_in_the_servers_process_and_dies_with_its_command(
        server: tuple[subprocess.Popen[str], str], tmp_path: Path) -> None:
    process, address = server
    command = pretrain(workdir(tmp_path, **LONG), address)
    try:
        until_training(command)
        [stage] = children(process.pid)  # forked by the server, not started by the command
        assert children(command.pid) == []
        command.send_signal(signal.SIGKILL)  # as an OOM kill or a killed `dvc repro` process group would
        command.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{stage}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{stage}").exists(), "the stage outlived its command"
    finally:
        if command.poll() is None:
            command.kill()
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "pretrain.json").exists()


def test_a_command_started_while_the_server_preloads_waits_for_it_and_runs_warm(tmp_path: Path) -> None:
    """The server listens before it imports torch and the rest, so whoever started it goes on meanwhile; a command
    that connects then is served once the preload ends, not run cold beside it."""
    folder = workdir(tmp_path / "project", **LONG)
    made = ingest(folder, os.environ.get(SERVER_ENV))  # the pretraining's input, before the clock of the preload
    assert made.returncode == 0, made.stderr
    process = start_server(str(tmp_path / "socket"))
    command = None
    try:
        preloading = "libtorch" not in Path(f"/proc/{process.pid}/maps").read_text()
        command = pretrain(folder, str(tmp_path / "socket"), ingested=True)
        assert preloading, "the server had preloaded torch before the command started: nothing shown"
        until_training(command)
        assert len(children(process.pid)) == 1 and children(command.pid) == []  # forked by the server
    finally:
        if command is not None and command.poll() is None:
            command.kill()
            command.wait()
        process.terminate()
        process.wait(timeout=30)


def test_a_signal_to_the_command_reaches_the_stage_and_it_ends_as_a_cold_one_does(
        server: tuple[subprocess.Popen[str], str], tmp_path: Path) -> None:
    _, address = server
    codes = {}
    for name, to in (("cold", None), ("warm", address)):
        command = pretrain(workdir(tmp_path / name, **LONG), to)
        until_training(command)
        command.send_signal(signal.SIGTERM)  # a cancelled flow run, Prefect stopping `dvc repro`
        assert command.stderr is not None
        command.stderr.read()
        codes[name] = command.wait(timeout=120)
    assert codes["warm"] == codes["cold"] != 0
    assert not (tmp_path / "warm" / "model.pt").exists()


def test_without_a_server_the_command_runs_the_stage_itself(tmp_path: Path) -> None:
    folder = workdir(tmp_path)
    result = ingest(folder, str(tmp_path / "no-server-here"))
    assert result.returncode == 0, result.stderr
    assert (folder / "source.npz").exists()


def test_a_forked_budget_stage_trains_its_draws_in_spawned_workers(
        server: tuple[subprocess.Popen[str], str], tmp_path: Path, tiny_data: dict[str, Path],
        tiny_pretrained: dict[str, object]) -> None:
    """`make run`'s path for budget.workers: a stage forked by the server starts fresh worker processes (spawned:
    they import the stage's module anew), and they train every draw."""
    process, address = server
    folder = workdir(tmp_path, budget={"labels_per_class": [1], "draws": 2, "workers": 2})
    command = subprocess.Popen([sys.executable, "-m", "tasks.budget", "--pretrained", str(tiny_pretrained["model"]),
                                "--target", str(tiny_data["target"]), "--table-out", "budget.csv", "--curve-out",
                                "curve.png", "--metrics", "budget.json"], cwd=folder, env=stage_env(folder, address),
                               stderr=subprocess.PIPE, text=True)
    try:
        assert command.stderr is not None
        for line in command.stderr:
            if "2 draws of 3 models each, in 2 process(es)" in line:
                break
        [stage] = children(process.pid)  # forked by the server
        workers: list[int] = []
        deadline = time.monotonic() + 60
        while len(workers) < 2 and command.poll() is None and time.monotonic() < deadline:
            workers = [pid for pid in children(stage) if "spawn_main" in command_line(pid)]
            time.sleep(0.05)
        assert len(workers) == 2, "the forked stage did not start its two workers"
        rest = command.stderr.read()
        assert command.wait(timeout=300) == 0, rest
    finally:
        if command.poll() is None:
            command.kill()
    assert json.loads((folder / "budget.json").read_text())["budgets"]["1"]["draws"] == 2
