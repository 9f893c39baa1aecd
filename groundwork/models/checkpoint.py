"""Self-describing checkpoints: weights plus the architecture and params that made them, loaded safely."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from groundwork.data.atomic import atomic_path
from groundwork.errors import CheckpointError
from groundwork.models.factorized import apply_factorization
from groundwork.models.digitnet import DigitNet
from groundwork.params import ModelParams

FORMAT = "groundwork-checkpoint/1"



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
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint's payload with weights_only=True, refusing anything that needs unpickling code."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found (run the stage that writes it)") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the file carries pickled objects beyond weights and plain data ({exc})"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    return payload


def load_model(path: Path | str) -> tuple[DigitNet, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights; return it with the payload."""
    payload = read_checkpoint(path)
    model = DigitNet(ModelParams.from_saved(payload["arch"]), num_classes=payload["num_classes"])
    apply_factorization(model, payload.get("factorized", {}))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored architecture ({exc})") from None
    return model.eval(), payload
