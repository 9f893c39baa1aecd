"""One pipeline run per project at a time: an OS file lock held for the whole flow run.

DVC takes its own lock per `dvc repro`, but a flow runs many of them: without a lock of its own, a second
flow would slip in between two stages of the first and both would fail half-way (or mix their outputs).
The lock is the operating system's (filelock: fcntl on Unix, msvcrt on Windows), released when its holder dies,
so a killed run never leaves a stale lock behind. Who holds it is written beside it, for the refusal message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_FILE = Path(".dvc") / "tmp" / "groundwork-flow.lock"
HOLDER_SUFFIX = ".holder"


class PipelineBusy(RuntimeError):
    """Another pipeline run holds this project's lock."""


@contextmanager
def pipeline_lock(root: Path) -> Iterator[None]:
    """Hold the project's pipeline lock, or raise PipelineBusy at once naming the holder."""
    path = root / LOCK_FILE
    holder = path.with_name(path.name + HOLDER_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        named = holder.read_text().strip() if holder.exists() else ""
        raise PipelineBusy(
            f"another pipeline run is in progress on {root} ({named or 'unknown'}); this run was refused "
            "and changed nothing. Wait for it to finish, or run again later."
        ) from None
    try:
        holder.write_text(f"pid {os.getpid()}")
        yield
    finally:
        with suppress(OSError):
            holder.unlink()
        lock.release()
