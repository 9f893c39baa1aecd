"""A temporary copy of the project as a fresh clone would have it, for end-to-end tests and benchmarks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def copy_project(destination: Path, params: dict[str, Any]) -> Path:
    """Copy the files git sees (tracked and new, not ignored; not dvc.lock), write `params` as params.yaml, commit
    it all in a fresh repository (DVC needs git, and runs are tagged with the commit)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (ROOT / name).is_file() and name != "dvc.lock":  # a fresh project: no record of earlier runs
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=groundwork", "-c", "user.email=groundwork@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)
    subprocess.run([*git, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=destination, check=True)
    return destination
