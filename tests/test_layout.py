"""The code's layout: the library (groundwork/) and the stages (tasks/) never import the flows (flows/ imports
them), so no import circle can form; and no module grows past MAX_LINES, so each keeps one job. Read from the
source files, nothing imported or run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 450


def modules(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py"))


def imported_names(path: Path) -> set[str]:
    """Every absolute module an import statement in the file names, at any depth (imports inside functions are
    the lazy ones, and they count): `import a.b` and `from a.b import c` give a.b."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", modules("groundwork", "tasks"), ids=lambda path: str(path.relative_to(ROOT)))
def test_library_and_stages_do_not_import_the_flows(path: Path) -> None:
    flows = sorted(name for name in imported_names(path) if name == "flows" or name.startswith("flows."))
    assert not flows, f"{path.relative_to(ROOT)} imports {', '.join(flows)}: flows/ imports it, not the reverse"


@pytest.mark.parametrize("path", modules("groundwork", "flows", "tasks"), ids=lambda path: str(path.relative_to(ROOT)))
def test_no_module_is_over_the_line_limit(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_LINES}): split it by job"
