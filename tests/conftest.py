"""Shared fixtures: the project's params.yaml shrunk to tiny sizes, and tiny datasets built by ingest."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks import ingest
from tasks.params import Params, parse_params

ROOT = Path(__file__).resolve().parent.parent

# Small enough that every stage runs in seconds on two cores, large enough that every code path runs.
TINY = {
    "model": {"channels": [8, 16], "embedding_dim": 32},
    "ingest": {"source_samples": 300, "labels_per_class": 3},
    "augment": {"copies": 1, "preview_images": 4},
    "pretrain": {"epochs": 2, "batch_size": 32},
    "transfer": {"epochs": 2, "batch_size": 16, "freeze_epochs": 1},
    "budget": {"labels_per_class": [1, 3], "draws": 2, "steps": 3},
    "compress": {"prune_iterations": 2, "finetune": {"epochs": 1}, "calibration_images": 16},
    "evaluate": {"warmup_runs": 1, "latency_runs": 5, "throughput_batch": 32, "throughput_runs": 3},
}


def deep_update(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with nested `changes` applied."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        merged[key] = deep_update(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def project_params_dict() -> dict[str, Any]:
    """The project's params.yaml as a plain dict."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_params_dict(**changes: Any) -> dict[str, Any]:
    """params.yaml with the TINY sizes, plus any further nested changes."""
    return deep_update(deep_update(project_params_dict(), TINY), changes)


@pytest.fixture(scope="session")
def tiny_params() -> Params:
    """Validated tiny params."""
    return parse_params(tiny_params_dict())


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params) -> dict[str, Path]:
    """Source and target datasets written by the ingest stage with tiny params."""
    folder = tmp_path_factory.mktemp("data")
    paths = {"source": folder / "source.npz", "target": folder / "target.npz"}
    ingest.run(tiny_params, source_out=paths["source"], target_out=paths["target"])
    return paths


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params,
                    tiny_data: dict[str, Path]) -> dict[str, Any]:
    """augment then pretrain on the tiny source: the checkpoint, history and metrics."""
    from tasks import augment, pretrain

    folder = tmp_path_factory.mktemp("pretrain")
    augment.run(tiny_params, source=tiny_data["source"], out=folder / "aug.npz", preview=folder / "preview.png")
    paths = {"model": folder / "pretrained.pt", "history": folder / "history.csv"}
    metrics = pretrain.run(tiny_params, train=folder / "aug.npz", source=tiny_data["source"],
                           model_out=paths["model"], history_out=paths["history"])
    return {**paths, "metrics": metrics}


@pytest.fixture(scope="session")
def tiny_transferred(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params, tiny_data: dict[str, Path],
                     tiny_pretrained: dict[str, Any]) -> dict[str, Any]:
    """transfer on the tiny target: the checkpoint, history and metrics."""
    from tasks import transfer

    folder = tmp_path_factory.mktemp("transfer")
    paths = {"model": folder / "transfer.pt", "history": folder / "history.csv"}
    metrics = transfer.run(tiny_params, pretrained=tiny_pretrained["model"], target=tiny_data["target"],
                           model_out=paths["model"], history_out=paths["history"])
    return {**paths, "metrics": metrics}


@pytest.fixture(scope="session")
def tiny_compressed(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params, tiny_data: dict[str, Path],
                    tiny_transferred: dict[str, Any]) -> dict[str, Any]:
    """compress the tiny transferred model: the output folder and metrics."""
    from tasks import compress

    folder = tmp_path_factory.mktemp("compressed")
    metrics = compress.run(tiny_params, transferred=tiny_transferred["model"], target=tiny_data["target"],
                           out_dir=folder)
    return {"dir": folder, "metrics": metrics}
