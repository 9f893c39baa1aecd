"""requirements.lock against pyproject.toml: the committed pair agrees, and each kind of disagreement fails the check
that `make test` runs first, with one line naming the package."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lock_check import CONSTRAINTS, LOCK, ROOT, disagreements, pinned


@pytest.fixture
def pair(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", LOCK, CONSTRAINTS):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def check(root: Path) -> subprocess.CompletedProcess[str]:
    """The check as `make test` runs it."""
    return subprocess.run([sys.executable, str(ROOT / "tests" / "lock_check.py"), "--root", str(root)],
                          capture_output=True, text=True)


def edit(path: Path, pattern: str, replacement: str) -> None:
    text, count = re.subn(pattern, replacement, path.read_text(), count=1, flags=re.MULTILINE)
    assert count == 1, f"{pattern!r} not in {path.name}"
    path.write_text(text)


def test_the_committed_lock_agrees_with_pyproject_and_pins_the_local_torch() -> None:
    assert disagreements(ROOT) == []
    pins = pinned(ROOT / LOCK)
    assert str(pins["torch"][0]) == "2.14.1" and str(pins["torchvision"][0]) == "0.29.1"
    assert check(ROOT).returncode == 0


def test_a_pin_outside_the_declared_range_fails_naming_the_package(pair: Path) -> None:
    edit(pair / LOCK, r"^mlflow==\S+", "mlflow==2.9.0")
    result = check(pair)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{LOCK} pins mlflow==2.9.0, outside pyproject.toml's mlflow<4,>=3.1: run `make lock`"]


def test_a_declared_package_the_lock_lacks_fails_naming_it(pair: Path) -> None:
    edit(pair / "pyproject.toml", r'^    "tqdm>=4.66,<5",$', '    "tqdm>=4.66,<5",\n    "polars>=1",')
    result = check(pair)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{LOCK} has no pin for polars, which pyproject.toml declares (polars>=1): run `make lock`"]


def test_a_pin_for_a_dependency_no_longer_declared_fails_naming_it(pair: Path) -> None:
    edit(pair / "pyproject.toml", r'^    "mlxtend>=0.23,<1",\n', "")
    result = check(pair)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "mlxtend==" in result.stderr
    assert "no longer declares it" in result.stderr


def test_a_torch_pin_other_than_the_local_release_fails(pair: Path) -> None:
    edit(pair / LOCK, r"^torch==\S+", "torch==2.14.0")
    result = check(pair)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"{LOCK} pins torch==2.14.0, but {CONSTRAINTS} asks torch==2.14.1: "
                                          "run `make lock`"]
