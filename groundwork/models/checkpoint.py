"""Self-describing checkpoints: weights plus the architecture and params that made them, loaded safely."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from groundwork.data.atomic import write_torch
from groundwork.data.untrusted import MAX_CHECKPOINT_BYTES, TORCH_LOAD_ERRORS, zip_members
from groundwork.errors import CheckpointError
from groundwork.models.digitnet import DigitNet
from groundwork.models.factorized import apply_factorization
from groundwork.params.training import ModelParams

FORMAT = "groundwork-checkpoint/1"
MAX_CLASSES = 1000  # a bound for files from elsewhere; the heads trained here have 10 outputs


def save_checkpoint(path: Path | str, model: DigitNet, *, stage: str, params: dict[str, Any],
                    metrics: dict[str, float]) -> None:
    """Write weights, architecture, the stage's params and its headline metrics, atomically."""
    payload = {
        "format": FORMAT,
        "stage": stage,
        "arch": model.arch.model_dump(mode="json"),
        "num_classes": model.num_classes,
        "factorized": model.factorized,
        "params": params,
        "metrics": metrics,
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }
    write_torch(path, payload)


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint's payload with weights_only=True, refusing anything that needs unpickling code. The file
    must be the zip archive torch.save writes, its members' declared sizes under MAX_CHECKPOINT_BYTES: torch's
    reader allocates each member's declared size before reading it, and its legacy format each storage's."""
    try:
        with zipfile.ZipFile(path) as archive:
            zip_members(archive, limit=MAX_CHECKPOINT_BYTES)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found (run the stage that writes it)") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint, not torch.save's zip format ({exc})") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: refused: {exc}") from None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the file carries pickled objects beyond weights and plain data ({exc})"
        ) from None
    except TORCH_LOAD_ERRORS as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    return payload


def build_model(arch: Any, num_classes: Any, factorized: Any) -> DigitNet:
    """The untrained model a saved file describes, each part checked before anything is built (a file from
    elsewhere could declare layers of billions of weights); ValueError with the reason."""
    if not isinstance(arch, dict):
        raise ValueError("no architecture stored")
    arch_params = ModelParams.from_saved(arch)  # the params' own bounds on every width
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes {num_classes!r} outside 1..{MAX_CLASSES}")
    if not isinstance(factorized, dict):
        raise ValueError(f"factorized must map layer names to ranks, got {type(factorized).__name__}")
    return apply_factorization(DigitNet(arch_params, num_classes=num_classes), factorized)


def load_model(path: Path | str) -> tuple[DigitNet, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights; return it with the payload."""
    payload = read_checkpoint(path)
    try:
        model = build_model(payload.get("arch"), payload.get("num_classes"), payload.get("factorized", {}))
    except ValueError as exc:  # pydantic's ValidationError is one
        raise CheckpointError(f"{path}: not a model this code can build ({exc})") from None
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"{path}: no state_dict of tensors")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored architecture ({exc})") from None
    return model.eval(), payload
