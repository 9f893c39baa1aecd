"""The MLflow UI on a project store, checked in a real browser: headless Chromium renders the runs page
and the runs the pipeline records appear on it, rendered (a screenshot in the test's temporary folder)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows.parent_run import start_parent_run
from groundwork.tracking.runs import FLOW_RUN_NAME_ENV, PARENT_RUN_ENV, ensure_experiment, stage_run
from tests.helpers import free_port

pytestmark = [pytest.mark.server, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without the background-networking switches, Chromium keeps trying hosts this machine cannot reach.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=20000", "--window-size=1400,900"]



def record_runs(root: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A parent run and a stage run under it, written by the project's own tracking helpers."""
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    parent = start_parent_run(run_name="pipeline · ui-check", tags={}, root=root)
    monkeypatch.setenv(PARENT_RUN_ENV, parent)
    monkeypatch.setenv(FLOW_RUN_NAME_ENV, "ui-check")
    with stage_run("pretrain", {"pretrain": {"epochs": 2}}) as tracker:
        for epoch in (1, 2):
            tracker.log_metrics({"val_accuracy": 0.5 * epoch}, step=epoch)
    from mlflow import MlflowClient
    return ensure_experiment(MlflowClient(f"sqlite:///{root / 'mlflow.db'}"), root)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_runs_appear_in_the_mlflow_ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    experiment = record_runs(tmp_path, monkeypatch)
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                           f"sqlite:///{tmp_path / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port)],
                          cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        page = f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs?workflowType=machine_learning"
        browser = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"]
        dom = subprocess.run([*browser, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
        assert "pipeline · ui-check" in dom, "the parent run is listed on the experiment's runs page"
        shot = tmp_path / "mlflow-runs.png"
        subprocess.run([*browser, f"--screenshot={shot}", page], capture_output=True, timeout=120)
        assert shot.stat().st_size > 10_000, "a rendered page, not a blank one"
    finally:
        ui.terminate()
        ui.wait(timeout=30)
