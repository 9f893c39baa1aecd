"""The project as files: its params.yaml, a smoke-sized variant of it, and a fresh copy of the whole project in
another folder (as a new clone has it) for end-to-end tests and benchmarks that must not touch this one."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

# Small enough that every stage runs in seconds on two cores, large enough that every code path runs.
TINY = {
    "model": {"channels": [8, 16], "embedding_dim": 32},
    "ingest": {"source_samples": 300, "labels_per_class": 3},
    "augment": {"copies": 1, "preview_images": 4},
    "pretrain": {"epochs": 2, "batch_size": 32},
    "transfer": {"epochs": 2, "batch_size": 16, "freeze_epochs": 1},
    "budget": {"labels_per_class": [1, 3], "draws": 2, "steps": 3},
    "search": {"episodes": 6, "warmup_episodes": 3, "calibration_images": 32, "width_multiple": 4,
               # multiply-adds: the tiny runs' policies stay the same from run to run (a latency budget moves
               # with the timings: the search's own tests run one)
               "latency_runs": 1, "budget_of": "macs"},
    "compress": {"prune_iterations": 2, "finetune": {"epochs": 1}, "calibration_images": 16},
    "evaluate": {"timing_rounds": 3, "warmup_runs": 1, "latency_runs": 3, "throughput_batch": 32, "throughput_runs": 1},
    "adaptive": {"stream": {"windows": 3, "window_size": 60, "shifted_from": 1, "strength": 90},
                 "monitor": {"permutations": 50},
                 "ask": {"queue_size": 12, "holdout_size": 20, "holdout_per_iteration": 10},
                 "adapt": {"min_labels": 10, "replay_target": 20, "replay_source": 20, "replay_learnt": 20,
                           "finetune": {"epochs": 2}}},
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


def copy_project(destination: Path, params: dict[str, Any]) -> Path:
    """Copy the files git sees (tracked and new, not ignored; not dvc.lock), write `params` as params.yaml, commit
    it all in a fresh repository (DVC needs git, and runs are tagged with the commit)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        # a fresh project: no record of earlier runs, no data that arrived here, no champion pointer of its loop
        if (ROOT / name).is_file() and name not in {"dvc.lock", "adaptive/dvc.lock"} and not name.startswith(
                ("data/", "models/")):
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=groundwork", "-c", "user.email=groundwork@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)
    subprocess.run([*git, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=destination, check=True)
    return destination
