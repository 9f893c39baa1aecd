"""The flow's reading of a stage's end: the outcome file a stage writes, and the retry condition built on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.states import Failed

from flows.pipeline import may_pass
from flows.repro import StageFailed
from groundwork.tracking.outcome import OUTCOME_DIR_ENV, Outcome, forget_outcome, read_outcome, record_outcome


def test_an_outcome_is_written_where_the_flow_asked_and_read_back(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OUTCOME_DIR_ENV, raising=False)
    record_outcome(Outcome(stage="ingest", kind="ran", exit_code=0))  # started by hand: nowhere to write, no error
    assert read_outcome(tmp_path, "ingest") is None
    monkeypatch.setenv(OUTCOME_DIR_ENV, str(tmp_path))
    record_outcome(Outcome(stage="ingest", kind="failed", exit_code=1, message="bad data"))
    assert read_outcome(tmp_path, "ingest") == Outcome(stage="ingest", kind="failed", exit_code=1, message="bad data")
    forget_outcome(tmp_path, "ingest")
    assert read_outcome(tmp_path, "ingest") is None
    (tmp_path / "ingest.json").write_text("{not json")
    assert read_outcome(tmp_path, "ingest") is None, "a torn file reads as no outcome, not as a crash"


@pytest.mark.parametrize(("failure", "retried"), [
    (StageFailed("stage 'x' failed", transient=True), True),
    (StageFailed("stage 'x' failed", transient=False), False),
    (RuntimeError("not a stage's failure"), True),  # Prefect's own default: retry
])
def test_only_failures_that_may_pass_are_retried(failure: Exception, retried: bool) -> None:
    assert may_pass(None, None, Failed(data=failure)) is retried
