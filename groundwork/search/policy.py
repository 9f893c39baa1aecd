"""The per-layer policy the search stage writes and compress reads: each prunable layer's width (in
`ModelParams.layer_widths` order) and each cell's precision in `searched_int8` (the prunable layers, then the
head), with the shares and the score that chose it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from groundwork.data.atomic import write_json
from groundwork.errors import DataError
from groundwork.params.training import ModelParams


def write_policy(path: Path, *, agent: str, budget: str, keeps: Sequence[float], widths: Sequence[int],
                 precisions: Sequence[str], reward: float) -> None:
    """Write the policy atomically: a killed search leaves the previous file or none, never half of one."""
    write_json(path, {"agent": agent, "budget": budget, "keeps": [round(k, 6) for k in keeps],
                      "widths": list(widths), "precisions": list(precisions), "val_accuracy_before_finetuning": reward})


def read_precisions(path: Path, cells: int) -> list[str]:
    """Each cell's precision in `searched_int8` from a policy file `read_policy` accepted; a list that is not
    `cells` long of "int8" / "fp32" is a DataError naming the file."""
    precisions = json.loads(Path(path).read_text()).get("precisions")
    if (not isinstance(precisions, list) or len(precisions) != cells
            or not all(precision in ("int8", "fp32") for precision in precisions)):
        raise DataError(f"{path}: precisions {precisions!r} are not one of 'int8' / 'fp32' for each of the {cells} "
                        "weighted layers (the prunable layers, then the head): run the search stage again")
    return precisions


def read_policy(path: Path, arch: ModelParams) -> ModelParams:
    """The narrower architecture a policy file gives `arch`; a file that is missing, not JSON, or whose widths do
    not fit `arch` is a DataError naming it."""
    try:
        payload: Any = json.loads(Path(path).read_text())
        widths = [int(width) for width in payload["widths"]]
    except FileNotFoundError:
        raise DataError(f"{path}: no search policy (run the search stage)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a search policy ({type(exc).__name__}: {exc})") from None
    full = arch.layer_widths()
    if len(widths) != len(full) or not all(0 < width <= most for width, most in zip(widths, full, strict=False)):
        raise DataError(f"{path}: widths {widths} do not fit the model's layers {list(full)} (one width per layer, "
                        "each at most the layer's own): was the policy searched for another architecture?")
    try:
        return arch.with_widths(widths)
    except ValueError as exc:
        raise DataError(f"{path}: widths {widths} make no valid model: {exc}") from None
