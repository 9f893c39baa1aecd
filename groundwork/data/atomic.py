"""Writes that never leave a half-written file behind: write to a temporary sibling, then rename."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from groundwork.errors import OutputNotWritten

NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: past RLIMIT_FSIZE or the filesystem's file size


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so the final rename is atomic on POSIX filesystems; the suffix is kept for tools
    # that infer the format from it.
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        if exc.errno in NO_ROOM:
            raise OutputNotWritten(f"{target}: not written: {exc.strerror} (a full disk, a quota or a file size "
                                   f"limit); the previous file is left as it was") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path | str, payload: Any) -> None:
    """Write JSON atomically, pretty-printed for diffs and `dvc metrics show`."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_torch(path: Path | str, payload: Any) -> None:
    """torch.save `payload` atomically. Serialised in memory first: torch's own file writer reports a full disk as
    a RuntimeError without its cause, where a plain write raises OSError with its errno."""
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


@contextmanager
def atomic_folder(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; it replaces `path` as a whole only if the block succeeds, so a
    killed or failed writer leaves the previous folder (or none), never part of a new set of files. The hidden
    folders a killed writer left are removed at the next start."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*target.parent.glob(f".{target.name}.tmp-*"), *target.parent.glob(f".{target.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    staging, previous = (target.with_name(f".{target.name}.{kind}-{os.getpid()}") for kind in ("tmp", "old"))
    staging.mkdir()
    try:
        yield staging
        if target.exists():
            os.replace(target, previous)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)
