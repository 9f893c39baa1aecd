"""The levels of relayed lines: a stage's warning reaches the flow's log as a WARNING, DVC's advice as DEBUG."""

from __future__ import annotations

import logging

import pytest

from flows.relay import relay

# lines as `dvc repro` prints them while a stage runs (taken from a default run's log)
STAGE_OUTPUT = """\
Running stage 'ingest':
> python -m tasks.ingest --source-out data/processed/source.npz --metrics reports/ingest.json
2026-12-05 09:53:30,777 INFO groundwork.tracking.runs: MLflow run 33ad6c4f (ingest · uncovered-caracal)
2026/12/05 09:53:01 INFO mlflow.store.db.utils: Creating initial MLflow database tables...
2026-12-05 09:53:31,458 WARNING [worker 4242] groundwork.data.corpus: source: 3 images were unreadable
/venv/lib/python3.11/site-packages/torch/onnx/utils.py:40: DeprecationWarning: You are using the legacy exporter
  torch.onnx.export(model, example, path)
2026/12/05 09:53:01 WARNING mlflow.models.model: Model logged without a signature.
W1205 11:32:35.162000 23623 torch/_export/non_strict_utils.py:825] dimension inputs[0].shape[0] 0/1 specialized
Generating lock file 'dvc.lock'
Updating lock file 'dvc.lock'

To track the changes with git, run:

\tgit add dvc.lock

To enable auto staging, run:

\tdvc config core.autostage true
Use `dvc push` to send your updates to remote storage.
Traceback (most recent call last):
  File "tasks/ingest.py", line 3, in <module>
ValueError: bad
ERROR: failed to reproduce 'ingest': failed to run: python -m tasks.ingest, exited with 1
"""
EXPECTED = [
    "INFO", "INFO", "INFO", "INFO", "WARNING", "WARNING", "WARNING", "WARNING", "WARNING", "DEBUG", "DEBUG",
    "DEBUG", "DEBUG", "DEBUG", "DEBUG", "DEBUG", "DEBUG", "DEBUG", "DEBUG", "DEBUG",
    "ERROR", "ERROR", "ERROR", "ERROR",
]


def test_each_line_keeps_the_level_it_was_written_at(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("relay-test")
    echo = relay(logger)
    with caplog.at_level(logging.DEBUG, logger="relay-test"):
        for line in STAGE_OUTPUT.splitlines():
            echo(line)
    got = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert [line for _, line in got] == STAGE_OUTPUT.splitlines(), "every line is relayed, in order, unchanged"
    assert [level for level, _ in got] == EXPECTED, got
