"""The MLflow UI on a project store, checked in a real browser: headless Chromium renders the runs page
and the runs the pipeline records appear on it, rendered (a screenshot in the test's temporary folder), as does
a registered version's card on its page."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.parent_run import start_parent_run
from flows.summary import mlflow_address
from groundwork.card import lineage, registered_model_description, training_data, version_card
from groundwork.params import parse_params
from groundwork.project import tiny_params_dict
from groundwork.tracking.registry import GateDecision
from groundwork.tracking.runs import FLOW_RUN_NAME_ENV, PARENT_RUN_ENV, ensure_experiment, stage_run
from tests.helpers import browse, mlflow_ui, needs_browser

pytestmark = [pytest.mark.server, pytest.mark.browser]

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


@needs_browser
def test_runs_appear_in_the_mlflow_ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    experiment = record_runs(tmp_path, monkeypatch)
    with mlflow_ui(tmp_path, tmp_path / "mlflow-ui.log") as address:
        page = mlflow_address("sqlite:///mlflow.db", experiment, ui=address)  # the address `groundwork ui` prints
        shot = tmp_path / "mlflow-runs.png"
        dom = browse(page, tmp_path / "chromium", screenshot=shot)
        assert "pipeline · ui-check" in dom, "the experiment opens on its runs (model training), not on traces"
        assert shot.stat().st_size > 10_000, "a rendered page, not a blank one"
        dom = browse(f"{address}/#/models/{CARD_MODEL}/versions/1", tmp_path / "chromium")
        assert CARD_TITLE in dom and "accuracy 0.9500 with no champion yet" in dom, "the version's card is shown"
