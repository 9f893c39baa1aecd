"""Arrivals as Prefect events: the watch's bookkeeping (a burst is one arrival, what was there before is not),
and, on a real Prefect server, a batch dropped into a served project's incoming folder starting exactly one run of
the hourly-adaptive deployment through its event trigger."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flows.watch import ARRIVED, arrival_event, watch
from groundwork.adaptive.watch import ArrivalWatch
from groundwork.project import copy_project, tiny_params_dict


def write(path: Path, content: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_an_arrival_is_reported_once_the_folder_is_still_and_a_burst_is_one(tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    write(folder / "before.npz")
    watcher = ArrivalWatch(folder, settle=2.0)
    watcher.start(now=0.0)
    assert watcher.look(now=1.0) is None, "what was there when the watch started is not an arrival"
    write(folder / "a.npz")
    assert watcher.look(now=2.0) is None, "just changed: not yet settled"
    assert watcher.look(now=3.0) is None
    assert watcher.look(now=4.5) == ["a.npz"]
    assert watcher.look(now=10.0) is None, "reported once"
    for name in ("b.npz", "c.npz"):  # a burst: two batches, one of them a folder of images written in parts
        write(folder / name)
    write(folder / "d" / "0.png")
    assert watcher.look(now=11.0) is None
    write(folder / "d" / "1.png")
    assert watcher.look(now=12.0) is None and watcher.look(now=13.0) is None
    assert watcher.look(now=14.5) == ["b.npz", "c.npz", "d"]
    write(folder / "a.npz", b"rewritten")
    write(folder / ".hidden")
    assert watcher.look(now=15.0) is None and watcher.look(now=17.5) == ["a.npz"], "a changed batch; dot files not"


def test_the_watch_emits_one_event_per_settled_arrival(tmp_path: Path) -> None:
    emitted: list[list[str]] = []
    looks = iter(range(12))

    def keep_going() -> bool:
        step = next(looks, None)
        if step == 2:
            write(tmp_path / "data" / "incoming" / "one.npz")
            write(tmp_path / "data" / "incoming" / "two.npz")
        return step is not None

    watch(tmp_path, interval=0.01, settle=0.02, emit=lambda root, entries: emitted.append(entries),
          keep_going=keep_going)
    assert emitted == [["one.npz", "two.npz"]]
    event = arrival_event(tmp_path, ["one.npz"])
    assert event["event"] == ARRIVED and event["resource"] == {
        "prefect.resource.id": f"groundwork.incoming.{tmp_path.name}",
        "prefect.resource.name": str(tmp_path / "data" / "incoming")}


@pytest.mark.server
def test_a_batch_dropped_into_a_served_project_starts_exactly_one_loop_run(prefect_test_server: None,
                                                                          tmp_path: Path) -> None:
    """`groundwork schedule --deployment hourly-adaptive` serves the loop with its trigger and `groundwork watch`
    watches the folder, both against the test server; one batch dropped in starts one flow run of the deployment
    (the project has not run its pipeline, so that run fails at once, saying so)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL

    project = copy_project(tmp_path / "project", tiny_params_dict())
    (project / "data" / "incoming").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    groundwork = str(Path(sys.executable).parent / "groundwork")
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("schedule", "watch")}
    served = subprocess.Popen([groundwork, "schedule", "--deployment", "hourly-adaptive", "--project-dir",
                               str(project)], cwd=project, stdout=logs["schedule"], stderr=subprocess.STDOUT,
                              env=env, start_new_session=True)
    watching = subprocess.Popen([groundwork, "watch", "--project-dir", str(project), "--interval", "0.2",
                                 "--settle", "0.5"], cwd=project, stdout=logs["watch"], stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    only = DeploymentFilter(name=DeploymentFilterName(any_=["hourly-adaptive"]))

    def runs() -> list[object]:
        with get_client(sync_client=True) as client:
            return client.read_flow_runs(deployment_filter=only)

    def wait_for(done: object, what: str, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while not done():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"{what}: {(tmp_path / 'schedule.log').read_text()[-2000:]}" \
                                                f"{(tmp_path / 'watch.log').read_text()[-2000:]}"
            time.sleep(0.2)

    try:
        with get_client(sync_client=True) as client:
            wait_for(lambda: client.read_deployments(deployment_filter=only), "the deployment is served")
        wait_for(lambda: "watching " in (tmp_path / "watch.log").read_text(), "the watch started")
        assert runs() == [], "nothing runs before a batch arrives (the schedule's next run is an hour away)"
        np.savez(project / "data" / "incoming" / "batch.npz", images=np.zeros((30, 28, 28), np.uint8))
        wait_for(lambda: runs(), "a flow run of the deployment")
        time.sleep(5)  # a second run would have been created by now
        [run] = runs()
        assert run.auto_scheduled is False and f"arrived: batch.npz ({ARRIVED} emitted)" in (
            tmp_path / "watch.log").read_text()
    finally:
        for process in (watching, served):
            os.killpg(process.pid, signal.SIGINT)
        for process in (watching, served):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_watch_without_a_prefect_server_says_how_to_set_one(tmp_path: Path) -> None:
    """A temporary server would vanish with the command and no deployment could hear it: exit 2, one line."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")  # no profile with a server in it
    result = subprocess.run([str(Path(sys.executable).parent / "groundwork"), "watch", "--project-dir",
                             str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "groundwork watch: PREFECT_API_URL is not set: events need a running Prefect server that the served loop "
        "also uses (`prefect server start`, then `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`)"]
