"""One pipeline run per project at a time: an OS file lock held for the whole flow run.

DVC takes its own lock per `dvc repro`, but a flow runs many of them: without a lock of its own, a second
flow would slip in between two stages of the first and both would fail half-way (or mix their outputs).
The lock is an advisory fcntl lock, released by the OS when its holder dies, so a killed run never leaves
a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = Path(".dvc") / "tmp" / "groundwork-flow.lock"


class PipelineBusy(RuntimeError):
    """Another pipeline run holds this project's lock."""


@contextmanager
def pipeline_lock(root: Path) -> Iterator[None]:
    """Hold the project's pipeline lock, or raise PipelineBusy at once naming the holder."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise PipelineBusy(
                f"another pipeline run is in progress on {root} ({holder}); this run was refused "
                "and changed nothing. Wait for it to finish, or run again later."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
