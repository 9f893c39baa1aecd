"""What a stage process tells the flow that started it, through a file rather than its log text: whether it ran,
and if it failed, whether the failure can be transient (worth a retry) or will recur on every attempt.

The flow names a folder in GROUNDWORK_OUTCOME_DIR; the stage's entry point writes `<stage>.json` there when it
ends. No file means the stage's command never ended on its own: DVC did not start it (a lock held, outputs
restored from its run cache, nothing changed) or the process was killed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from groundwork.data.atomic import atomic_path

OUTCOME_DIR_ENV = "GROUNDWORK_OUTCOME_DIR"
# ran: the stage did its work; failed: it will fail again with the same inputs (bad params or data, divergence,
# a bug); transient: the cause may pass (the tracking server unreachable, an I/O error).
Kind = Literal["ran", "failed", "transient"]


@dataclass(frozen=True)
class Outcome:
    """How one execution of a stage ended."""

    stage: str
    kind: Kind
    exit_code: int
    message: str = ""


def _path(folder: Path, stage: str) -> Path:
    return folder / f"{stage}.json"


def record_outcome(outcome: Outcome) -> None:
    """Write the outcome where the flow asked for it; nothing when the stage was not started by a flow."""
    folder = os.environ.get(OUTCOME_DIR_ENV)
    if folder:
        with atomic_path(_path(Path(folder), outcome.stage)) as tmp:
            tmp.write_text(json.dumps(asdict(outcome)))


def forget_outcome(folder: Path, stage: str) -> None:
    """Remove a stage's earlier outcome, before it is run again."""
    _path(folder, stage).unlink(missing_ok=True)


def read_outcome(folder: Path, stage: str) -> Outcome | None:
    """The outcome the stage recorded, or None when it recorded none."""
    try:
        return Outcome(**json.loads(_path(folder, stage).read_text()))
    except (OSError, ValueError, TypeError):
        return None
