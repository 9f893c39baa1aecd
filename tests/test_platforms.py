"""Platforms without what the stage server needs (Windows: no fork, no `resource`, no Unix sockets; macOS: no
sched_getaffinity, and fork after torch is unsafe there): the command, a stage and a whole flow still run, cold.

The platform is simulated on this Linux machine: a sitecustomize removes os.fork and os.sched_getaffinity, and
`import resource` fails for the project's own modules (third-party libraries keep their Linux code paths, which
on another platform are their own business)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from groundwork import forkserver
from groundwork.project import ROOT, copy_project, tiny_params_dict

WITHOUT_THE_CALLS = '''\
import builtins, os
for name in ("fork", "forkpty", "sched_getaffinity", "sched_setaffinity"):
    if hasattr(os, name):
        delattr(os, name)
_import = builtins.__import__
def _without_resource(name, globals=None, locals=None, fromlist=(), level=0):
    importer = str((globals or {}).get("__name__", "")).split(".")[0]
    if name == "resource" and importer in {"groundwork", "flows", "tasks"}:
        raise ImportError("No module named 'resource'")
    return _import(name, globals, locals, fromlist, level)
builtins.__import__ = _without_resource
'''
LACKS = "this Python lacks os.fork, os.sched_getaffinity, the resource module"
GROUNDWORK = "from flows.cli import main; raise SystemExit(main())"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a process on the simulated platform."""
    folder = tmp_path_factory.mktemp("platform")
    (folder / "sitecustomize.py").write_text(WITHOUT_THE_CALLS)
    env = {key: value for key, value in os.environ.items() if key not in (forkserver.SERVER_ENV, "PYTHONPATH")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}


@pytest.mark.parametrize(("simulate", "reason"), [
    (lambda patch: patch.delattr(os, "fork"), "this Python lacks os.fork"),
    (lambda patch: patch.delattr(os, "sched_getaffinity"), "this Python lacks os.sched_getaffinity"),
    (lambda patch: patch.setattr(forkserver, "resource", None), "this Python lacks the resource module"),
    (lambda patch: patch.setattr(sys, "platform", "darwin"), "the stage server runs on Linux only, not on darwin"),
    (lambda patch: patch.setenv(forkserver.SWITCH_ENV, "0"), "GROUNDWORK_WARM_STAGES=0 turns the stage server off"),
], ids=["no-fork", "no-sched_getaffinity", "no-resource", "macos", "switched-off"])
def test_without_a_needed_call_stages_start_cold_and_it_is_said_once(
        monkeypatch: pytest.MonkeyPatch, simulate, reason: str) -> None:
    monkeypatch.delenv(forkserver.SERVER_ENV, raising=False)
    monkeypatch.delenv(forkserver.SWITCH_ENV, raising=False)
    simulate(monkeypatch)
    assert forkserver.unavailable() == reason
    said: list[str] = []
    with forkserver.running(said.append) as warm:
        assert warm == {}
    assert said == [f"stages start cold: {reason}"]
    # a server named in the environment (inherited from elsewhere) is not used either: the command runs the stage
    monkeypatch.setenv(forkserver.SERVER_ENV, "/nonexistent/socket")
    assert forkserver.hand_over("tasks.ingest", []) is None


def test_on_linux_with_every_call_the_stage_server_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(forkserver.SWITCH_ENV, raising=False)
    assert sys.platform == "linux" and forkserver.unavailable() is None


@pytest.mark.subprocess
def test_the_command_starts_without_fork_resource_or_sched_getaffinity(simulated: dict[str, str]) -> None:
    probe = subprocess.run([sys.executable, "-c", "from groundwork import forkserver; print(forkserver.unavailable())"],
                           env=simulated, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == LACKS, "the simulation is in place"
    result = subprocess.run([sys.executable, "-c", GROUNDWORK, "--help"], env=simulated, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: groundwork" in result.stdout


@pytest.mark.e2e
@pytest.mark.server
def test_a_flow_runs_its_stages_cold_and_says_so_once(simulated: dict[str, str], prefect_test_server: None,
                                                      tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    project = copy_project(tmp_path / "project", tiny_params_dict())
    graph = yaml.safe_load((project / "dvc.yaml").read_text())
    # the flow runs every stage of the project's graph: here the first two, enough for a stage and a whole flow
    trimmed = {"stages": {name: graph["stages"][name] for name in ("ingest", "augment")}}
    (project / "dvc.yaml").write_text(yaml.safe_dump(trimmed, sort_keys=False))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "two stages"],
                   cwd=project, check=True)
    env = {**simulated, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-c", GROUNDWORK, "run", "--project-dir", str(project)], env=env,
                            capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert log.count(f"stages start cold: {LACKS}") == 1, log[-3000:]
    assert set(yaml.safe_load((project / "dvc.lock").read_text())["stages"]) == {"ingest", "augment"}
    assert (project / "reports" / "augment.json").exists()


@pytest.mark.subprocess
def test_without_process_groups_a_signal_still_stops_the_supervised_server(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text("import os\ndel os.killpg\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    server = "import time; print('serving', flush=True); time.sleep(120)"
    supervisor = subprocess.Popen([sys.executable, "-m", "groundwork.supervise", "--", sys.executable, "-c", server],
                                  env=env, stdout=subprocess.PIPE, text=True)
    assert supervisor.stdout is not None and supervisor.stdout.readline().strip() == "serving"
    import psutil

    (child,) = psutil.Process(supervisor.pid).children()
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 128 + signal.SIGTERM
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
