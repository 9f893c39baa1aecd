"""Every model variant as something to run on the CPU: the fp32 reference checkpoint and what the compress
stage listed in its manifest, each with its deployable file and its parameter counts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from groundwork.compression.export import MANIFEST, onnx_logits, onnx_session, parameter_counts
from groundwork.compression.names import REFERENCE
from groundwork.compression.packing import load_packed
from groundwork.errors import DataError
from groundwork.models.checkpoint import load_model
from groundwork.tracking.registry_gate import Predict
from groundwork.training.loop import logits_of


@dataclass(frozen=True)
class Variant:
    """One model variant: its deployable file, a function that runs it on the CPU, its parameter counts, and
    (for a PyTorch model) the model itself."""

    path: Path
    predict: Predict
    param_count: int
    nonzero_param_count: int
    model: torch.nn.Module | None = None


def _torch_variant(path: Path, model: torch.nn.Module) -> Variant:
    cpu = torch.device("cpu")
    counts = parameter_counts(model)
    return Variant(path, lambda x: logits_of(model, x, device=cpu), counts["params"], counts["nonzero_params"],
                   model=model)


def load_variants(transferred: Path, compressed: Path) -> dict[str, Variant]:
    """The fp32 reference (channels_last PyTorch) and every variant the compress stage listed in its manifest."""
    found = {REFERENCE: _torch_variant(transferred, load_model(transferred)[0])}
    manifest_path = compressed / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{manifest_path}: no variant manifest (run the compress stage)") from None
    for name, entry in manifest.items():
        path = compressed / entry["file"]
        if not path.is_file():
            raise DataError(f"{path}: variant '{name}' listed in {manifest_path} is missing (run the compress stage)")
        if entry["runtime"] == "packed":
            found[name] = _torch_variant(path, load_packed(path))
        else:
            try:
                session = onnx_session(path)
            except Exception as error:  # ONNX Runtime raises its own types for a damaged file
                raise DataError(f"{path}: variant '{name}' is not a loadable ONNX model ({error})") from None
            found[name] = Variant(path, lambda x, session=session: onnx_logits(session, x),
                                  entry["params"], entry["nonzero_params"])
    return found
