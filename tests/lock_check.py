"""Check that requirements.lock agrees with pyproject.toml (and torch-local.txt), and, with --installed, that the
environment holds what the lock pins. One line per disagreement, naming the package; exit status 1 if any.

`make test` runs it before the suite: `python tests/lock_check.py --installed`. `make lock` rewrites the lock.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = "requirements.lock"
CONSTRAINTS = "torch-local.txt"
EXTRA = "dev"
# pip-compile writes who asked for each pin under it: "# via groundwork (pyproject.toml)", "#   -c torch-local.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")
FROM_PROJECT = "(pyproject.toml)"
REFRESH = "run `make lock`"
REINSTALL = f"`pip install -r {LOCK}` installs it"


def declared(pyproject: Path) -> list[Requirement]:
    """The project's requirements and its dev extra's, those whose markers hold on this interpreter."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = [*project.get("dependencies", []), *project.get("optional-dependencies", {}).get(EXTRA, [])]
    requirements = [Requirement(line) for line in lines]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": EXTRA})]


def pinned(lock: Path) -> dict[str, tuple[Version, bool]]:
    """Each pin of the lock: canonical name -> (version, whether pyproject.toml asked for it directly)."""
    pins: dict[str, tuple[Version, bool]] = {}
    current: str | None = None
    for line in lock.read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match[1])
            pins[current] = (Version(match[2]), False)
        elif current is not None and line.lstrip().startswith("#") and FROM_PROJECT in line:
            pins[current] = (pins[current][0], True)
    return pins


def constrained(constraints: Path) -> Iterable[Requirement]:
    for line in constraints.read_text().splitlines():
        if line.split("#", 1)[0].strip():
            yield Requirement(line.split("#", 1)[0].strip())


def disagreements(root: Path) -> list[str]:
    """What makes the lock disagree with pyproject.toml and the local torch pins, one line each."""
    pins = pinned(root / LOCK)
    problems = []
    wanted = declared(root / "pyproject.toml")
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{LOCK} has no pin for {requirement.name}, which pyproject.toml declares "
                            f"({requirement}): {REFRESH}")
        elif not requirement.specifier.contains(pins[name][0], prereleases=True):
            problems.append(f"{LOCK} pins {requirement.name}=={pins[name][0]}, outside pyproject.toml's "
                            f"{requirement}: {REFRESH}")
    names = {canonicalize_name(r.name) for r in wanted}
    for name, (version, direct) in sorted(pins.items()):
        if direct and name not in names:
            problems.append(f"{LOCK} pins {name}=={version} for pyproject.toml, which no longer declares it: "
                            f"{REFRESH}")
    for requirement in constrained(root / CONSTRAINTS):
        name = canonicalize_name(requirement.name)
        if name not in pins or not requirement.specifier.contains(pins[name][0], prereleases=True):
            got = f"pins {name}=={pins[name][0]}" if name in pins else f"has no pin for {name}"
            problems.append(f"{LOCK} {got}, but {CONSTRAINTS} asks {requirement}: {REFRESH}")
    return problems


def not_installed(root: Path) -> list[str]:
    """Pins of the lock that this environment lacks or holds at another version, one line each."""
    problems = []
    for name, (version, _) in sorted(pinned(root / LOCK).items()):
        try:
            have = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed, {LOCK} pins {version}: {REINSTALL}")
            continue
        if have != version:
            problems.append(f"{name} {have} is installed, {LOCK} pins {version}: {REINSTALL}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--installed", action="store_true", help="also check the installed versions against the lock")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project folder (default: this checkout)")
    args = parser.parse_args(argv)
    problems = disagreements(args.root) + (not_installed(args.root) if args.installed else [])
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
