"""The MLflow UI on a project store, checked in a real browser: headless Chromium renders the runs page
and the runs the pipeline records appear on it, rendered (a screenshot in the test's temporary folder), as does
a registered version's card on its page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows.cli import without_job_runners
from flows.parent_run import start_parent_run
from groundwork.card import lineage, registered_model_description, training_data, version_card
from groundwork.params import parse_params
from groundwork.project import tiny_params_dict
from groundwork.tracking.registry import GateDecision
from groundwork.tracking.runs import FLOW_RUN_NAME_ENV, PARENT_RUN_ENV, ensure_experiment, stage_run
from tests.helpers import free_port

pytestmark = [pytest.mark.server, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without the background-networking switches, Chromium keeps trying hosts this machine cannot reach.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=20000", "--window-size=1400,900"]
CARD_MODEL, CARD_TITLE = "ui-check-digits", "ui-check-digits version 1: the int8 variant"



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
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    # a registered version with the card evaluate writes (version_card), described through the tracker
    client.create_registered_model(CARD_MODEL)
    client.create_model_version(CARD_MODEL, source=str(root / "model"), run_id=parent)
    params = parse_params(tiny_params_dict())
    decision = GateDecision(True, "accuracy 0.9500 with no champion yet", "accuracy", 0.95, None, None)
    card = version_card(title=CARD_TITLE, params=params, trained_on=training_data(params, {"target": "0" * 64}),
                        scores={"int8": {"accuracy": "95.00%"}, "fp32": {"accuracy": "96.00%"}},
                        registered="int8", decision=decision, lineage=lineage(root, ("compress",)))
    with stage_run("evaluate", {}) as tracker:
        tracker.describe(CARD_MODEL, "1", registered_model_description(params), card)
    return ensure_experiment(client, root)


# skipped where Chromium is missing, except where it is required (.ci/run: CI fails rather than skip the check)
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("GROUNDWORK_REQUIRE_BROWSER"),
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_runs_appear_in_the_mlflow_ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert CHROMIUM is not None, "GROUNDWORK_REQUIRE_BROWSER is set and chromium is not installed"
    experiment = record_runs(tmp_path, monkeypatch)
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                           f"sqlite:///{tmp_path / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port)],
                          cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env={**without_job_runners(), "MLFLOW_TRACKING_URI": ""})
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
        version_page = f"http://127.0.0.1:{port}/#/models/{CARD_MODEL}/versions/1"
        dom = subprocess.run([*browser, "--dump-dom", version_page], capture_output=True, text=True,
                             timeout=120).stdout
        assert CARD_TITLE in dom and "accuracy 0.9500 with no champion yet" in dom, "the version's card is shown"
    finally:
        ui.terminate()
        ui.wait(timeout=30)
