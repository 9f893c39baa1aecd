"""Resume files: the training state after the last completed epoch, so a killed stage continues, not restarts."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from groundwork.data.atomic import write_torch
from groundwork.data.untrusted import TORCH_LOAD_ERRORS

log = logging.getLogger(__name__)


def save_resume(path: Path, fingerprint: str, state: dict[str, Any]) -> None:
    """Write the state atomically: a kill during the write leaves the previous epoch's file intact."""
    write_torch(path, {"fingerprint": fingerprint, "state": state})


def load_resume(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The saved state if `path` holds one for this very run (same params, data, seed and start), else None."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, *TORCH_LOAD_ERRORS) as exc:
        log.warning("%s: unreadable resume file ignored, training from the start (%s)", path, exc)
        return None
    if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
        log.info("%s: resume file is from another run (params, data or seed differ); starting fresh", path)
        return None
    return saved["state"]
