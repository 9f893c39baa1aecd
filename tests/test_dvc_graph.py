"""The graph cannot drift from the code: every file a stage imports (its import closure within the project, lazy
imports included) is covered by one of its DVC deps, every code dep it lists is one it imports, every params
key it declares exists; and no module anywhere imports a stage module."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from groundwork.dvc_graph import GRAPH_FILES, declared_keys, select
from groundwork.project import ROOT, project_params_dict

PACKAGES = ("groundwork", "tasks", "flows")  # the project's importable code; bench/ and tests/ are not imported
STAGE_PACKAGE = "tasks"
# How a stage's process starts (cold, or forked from a warm interpreter), not what it computes: like the Python
# interpreter and the installed libraries, not a DVC dep, so that a change to it reruns nothing.
LAUNCHER = frozenset({"tasks/__init__.py", "groundwork/forkserver.py"})


def module_file(root: Path, module: str) -> Path | None:
    """The file that defines `module` under `root` (a module or a package's __init__.py), if it is there."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(root: Path, path: Path) -> set[str]:
    """Every module `path` imports anywhere in its body (module level or inside functions), with the packages
    that hold them (importing `a.b.c` runs a/__init__.py and a/b/__init__.py too) and, for `from a import b`,
    `a.b` in case b is a submodule."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(root, path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(root, path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    with_parents = set()
    for name in names:
        parts = name.split(".")
        with_parents.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
    return with_parents


def import_closure(root: Path, module: str) -> set[Path]:
    """The project files that importing `module` runs, found by following imports from file to file."""
    start = module_file(root, module)
    if start is None:
        raise FileNotFoundError(f"{module}: no such module under {root}")
    seen: set[Path] = set()
    pending = [start]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        pending.extend(found for name in imported_modules(root, path)
                       if (found := module_file(root, name)) is not None)
    return seen


def has_code(path: Path) -> bool:
    """Whether a file holds anything beyond a docstring (an empty package __init__.py runs nothing)."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def stage_module(command: str) -> str:
    """The module a stage's `python -m <module> ...` command runs."""
    words = shlex.split(command)
    return words[words.index("-m") + 1]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def dependency_gaps(root: Path, dvc_file: str = "dvc.yaml") -> list[str]:
    """Every mismatch between the stages' code deps in `dvc_file` and what their modules import, in words."""
    stages = yaml.safe_load((root / dvc_file).read_text())["stages"]
    gaps = []
    for name, spec in stages.items():
        deps = [str(dep) for dep in spec.get("deps", [])]
        closure = {path.relative_to(root).as_posix() for path in import_closure(root, stage_module(spec["cmd"]))
                   if has_code(path)} - LAUNCHER
        gaps += [f"stage '{name}' imports {path}, which none of its deps covers" for path in sorted(closure)
                 if not covered(path, deps)]
        for dep in deps:
            listed = [dep] if dep.endswith(".py") else sorted(
                path.relative_to(root).as_posix() for path in (root / dep).rglob("*.py") if has_code(path))
            gaps += [f"stage '{name}' lists {path}{'' if path == dep else f' (in {dep})'}, which it does not import"
                     for path in listed if path not in closure]
    return gaps


@pytest.mark.parametrize("dvc_file", GRAPH_FILES)
def test_every_stage_declares_exactly_the_code_it_imports(dvc_file: str) -> None:
    assert dependency_gaps(ROOT, dvc_file) == []


def test_a_dep_missing_from_dvc_yaml_is_named(tmp_path: Path) -> None:
    """The check itself, on a tiny project: one stage whose module imports a helper two levels down, lazily."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "__init__.py").write_text('"""A package with nothing to run."""\n')
    (tmp_path / "lib" / "helper.py").write_text("def help():\n    from lib import deeper\n    return deeper\n")
    (tmp_path / "lib" / "deeper.py").write_text("VALUE = 1\n")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "make.py").write_text("from lib.helper import help\n")
    graph = {"stages": {"make": {"cmd": "python -m stages.make --out x", "deps": ["stages/make.py", "lib/helper.py"]}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(graph))
    assert dependency_gaps(tmp_path) == ["stage 'make' imports lib/deeper.py, which none of its deps covers"]

    graph["stages"]["make"]["deps"] = ["stages/make.py", "lib", "unused.py"]
    (tmp_path / "unused.py").write_text("X = 1\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(graph))
    assert dependency_gaps(tmp_path) == ["stage 'make' lists unused.py, which it does not import"]


@pytest.mark.parametrize(("dvc_file", "stage"), [(f, stage) for f in GRAPH_FILES
                                                 for stage in sorted(yaml.safe_load((ROOT / f).read_text())["stages"])])
def test_declared_params_keys_exist(dvc_file: str, stage: str) -> None:
    keys = declared_keys(stage, ROOT / dvc_file)
    if yaml.safe_load((ROOT / dvc_file).read_text())["stages"][stage].get("always_changed"):
        assert not keys, f"stage '{stage}' runs every time to read the machine, not params"
        return
    assert keys, f"stage '{stage}' declares no params"
    select(project_params_dict(), keys)  # KeyError names a key params.yaml lacks


def test_no_module_imports_a_stage_module() -> None:
    """Stages are entry points: the library, the flows, other stages and the benchmarks never import one. (Test
    modules do: tests call a stage's run() as a plain function.)"""
    offenders = []
    for folder in (*PACKAGES, "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            stage_imports = {name for name in imported_modules(ROOT, path)
                             if name.startswith(f"{STAGE_PACKAGE}.") and module_file(ROOT, name) is not None}
            offenders += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(stage_imports)]
    assert offenders == []


def test_test_helpers_import_no_stage() -> None:
    """Shared test helpers stay free of stages (conftest's fixtures call stages the way the tests do)."""
    assert {name for name in imported_modules(ROOT, ROOT / "tests" / "helpers.py")
            if name.startswith(f"{STAGE_PACKAGE}.")} == set()
