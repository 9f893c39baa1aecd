"""Helpers the test modules share: free ports, a real `mlflow server`, DVC commands on a project copy, what a flow
run left behind in MLflow and Prefect, and copies of a project that has already run (so a test that changes it
stands alone)."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from flows.cli import without_job_runners
from groundwork.tracking.runs import DEFAULT_EXPERIMENT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class TrackingServer:
    url: str
    artifacts: Path  # the server's --artifacts-destination: where artifacts land, whoever logs them


def start_tracking_server(folder: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], TrackingServer]:
    """`mlflow server` as a team would run it, with local stand-ins for the database and the bucket, in `folder`.
    Started again with the same folder and port, it is the same server after a restart (same store, same URL)."""
    server = TrackingServer(url=f"http://127.0.0.1:{port or free_port()}", artifacts=folder / "artifacts")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(server.artifacts), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", server.url.rsplit(":", 1)[1], "--workers", "1"]
    # appended to: a restarted server's log follows the first one's
    with (folder / "server.log").open("ab") as log:  # its own process group: stopped with its workers
        process = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=without_job_runners())
    return process, server


def wait_until_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Return once the server at `url` (an MLflow tracking, model or UI server; a Prefect API) answers /health;
    fail with its log when it exits or takes over 120 s."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the server is not healthy after 120 s:\n{log.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Stop a server started in its own process group, workers and all."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def dvc(project: Path, *args: str) -> str:
    """`dvc <args>` in `project`; its standard output (CalledProcessError when it fails)."""
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True,
                          check=True).stdout


def pipeline_status(project: Path, dvc_file: str = "dvc.yaml") -> dict[str, Any]:
    """`dvc status --json` of the pipeline, less the machine stage, which DVC runs every time (always_changed: the
    fingerprint the latency table depends on is read afresh); {} when nothing would change."""
    status = json.loads(dvc(project, "status", "--json", dvc_file))
    assert status.pop("machine", ["always changed"]) == ["always changed"]
    return status


def output_digests(project: Path) -> dict[str, str]:
    """SHA-256 of every file under the DVC output folders."""
    return {str(path.relative_to(project)): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in ("data", "models", "reports") for path in sorted((project / folder).rglob("*"))
            if path.is_file() and path.name != ".gitignore"}


def change_params(project: Path, section: str, **changes: Any) -> None:
    """Edit one section of the project's params.yaml, as a user would."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section] |= changes
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def statuses(results: list[Any]) -> dict[str, str]:
    """Stage name -> what happened to it, from a flow run's results."""
    return {result.stage: result.status for result in results}


def child_runs(client: MlflowClient, parent_id: str) -> list[Any]:
    """The stage runs nested under a flow's parent run."""
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    return client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def item_runs(client: MlflowClient, stage_run_id: str, kind: str) -> dict[str, Any]:
    """A stage run's child runs about one `kind` of item each (variant, budget, method), by the item's name."""
    return {run.data.tags[kind]: run for run in child_runs(client, stage_run_id) if kind in run.data.tags}


def parent_runs(client: MlflowClient) -> list[Any]:
    """Every flow's parent run, oldest first."""
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    return client.search_runs([experiment.experiment_id], "tags.stage = 'pipeline'", order_by=["start_time ASC"])


def published_artifacts(flow_run_id: Any) -> dict[str, Any]:
    """The artifacts a flow run published (Prefect's Artifact objects), by key, read back from the Prefect
    server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {artifact.key: artifact for artifact in found}


def flow_artifacts(flow_run_id: Any) -> dict[str, Any]:
    """The data of the artifacts a flow run published, by key."""
    return {key: artifact.data for key, artifact in published_artifacts(flow_run_id).items()}


def clone_ran_project(project: Path, destination: Path) -> Path:
    """A copy of a project that has run, with everything it holds (git, DVC cache and lock, outputs, MLflow
    store), for a test that changes it. The copy's MLflow experiment still keeps new artifacts in the original's
    mlartifacts/ (its location is stored as an absolute path); runs, models and registry are the copy's own."""
    shutil.copytree(project, destination, symlinks=True)
    return destination


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without the background-networking switches, Chromium keeps trying hosts this machine cannot reach; the resolver
# rule makes every outside address fail at once, so a page that needs the network shows it.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--virtual-time-budget=20000",
                  "--window-size=1400,900"]


def browse(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page at `url` as headless Chromium renders it (its DOM after scripts ran), with outside addresses
    blocked; a screenshot too where one is asked for (kept as the test's artifact)."""
    assert CHROMIUM is not None, "chromium is not installed (.ci/run installs it)"
    browser = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    if screenshot is not None:
        subprocess.run([*browser, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    return dom


def page_text(dom: str) -> str:
    """A DOM's text as a reader sees it: tags dropped (markdown's `code` and **bold** render as tags), entities
    decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", dom))


@contextmanager
def prefect_ui(log: Path) -> Iterator[str]:
    """`prefect server start` with its UI and no services, on the running test server's database (the test
    harness serves the API alone), its output in `log`; its address, once it answers."""
    from prefect.settings import get_current_settings

    database = get_current_settings().server.database.connection_url
    assert database is not None, "the Prefect test server's database is not set"
    port = free_port()
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
             "--no-services", "--ui"], stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PREFECT_SERVER_DATABASE_CONNECTION_URL": database.get_secret_value(),
                 "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"})
    try:
        wait_until_healthy(server, f"http://127.0.0.1:{port}/api", log)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@contextmanager
def mlflow_ui(project: Path, log: Path) -> Iterator[str]:
    """`mlflow ui` on the project's SQLite store, on a free port, its output in `log`; its address, once it
    answers."""
    port = free_port()
    with log.open("wb") as output:
        ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                               f"sqlite:///{project / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=project, stdout=output, stderr=subprocess.STDOUT,
                              env={**without_job_runners(), "MLFLOW_TRACKING_URI": ""})
    try:
        wait_until_healthy(ui, f"http://127.0.0.1:{port}", log)
        yield f"http://127.0.0.1:{port}"
    finally:
        ui.terminate()
        ui.wait(timeout=30)


# skipped where Chromium is missing, except where it is required (.ci/run: CI fails rather than skip the check)
needs_browser = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("GROUNDWORK_REQUIRE_BROWSER"),
                                   reason="Debian's chromium is not installed (.ci/run installs it)")
