"""Lookups in the project's DVC graph files (dvc.yaml, adaptive/dvc.yaml): which file defines a stage, and which
params keys it declares. A stage's entry point records the params it declares in its MLflow run (what DVC reruns it
for); the `groundwork` command lists the stages. Read here, beside neither: the entry point runs under a plain
`dvc repro` with no flow, so the lookups cannot live in flows/ (the library never imports it)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from groundwork.params import Params

GRAPH_FILES = ("dvc.yaml", "adaptive/dvc.yaml")  # the pipeline, then the adaptive loop (its stages in wdir ..)


def graph_file(stage: str, root: Path) -> Path:
    """The file of GRAPH_FILES under `root` that defines `stage` (the pipeline's when none does)."""
    return next((root / name for name in GRAPH_FILES if declared_keys(stage, root / name) is not None),
                root / GRAPH_FILES[0])


def declared_keys(stage: str, dvc_file: Path) -> list[str] | None:
    """The params keys dvc.yaml declares for `stage`: sections (`augment`) or dotted keys (`augment.rotation`);
    None when the file or the stage is not there."""
    try:
        keys = yaml.safe_load(Path(dvc_file).read_text())["stages"][stage].get("params", [])
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return None
    return [key for key in keys if isinstance(key, str)]  # {other_file.yaml: [...]} entries are not ours


def select(values: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The parts of nested `values` that dotted `keys` name, nested as in `values`."""
    chosen: dict[str, Any] = {}
    for key in keys:
        *path, leaf = key.split(".")
        source, target = values, chosen
        for part in path:
            source, target = source[part], target.setdefault(part, {})
        target[leaf] = copy.deepcopy(source[leaf])
    return chosen


def declared_params(stage: str, params: Params, dvc_file: Path) -> dict[str, Any]:
    """The params `stage` declares in dvc.yaml (what it reads: what DVC reruns it for), nested as in params.yaml,
    for its MLflow run; all of them when dvc.yaml does not declare the stage."""
    everything = params.model_dump(mode="json")
    keys = declared_keys(stage, dvc_file)
    return everything if keys is None else select(everything, keys)
