"""Relay a DVC command's output into the flow's log at the level each line was written at.

A stage's lines reach the flow as plain text (`dvc repro` runs the stage as a subprocess): relayed all at INFO, a
warning is not a warning any more and filtering a run's log for warnings finds none. This reads the level back from
the line's own format (the stages' logging format, MLflow's, Python's warnings, DVC's), and sends DVC's per-stage
advice on git and auto-staging, which says the same thing after every stage, to DEBUG.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

LEVELS = "DEBUG|INFO|WARNING|ERROR|CRITICAL"
LEVELLED = (
    re.compile(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} ({LEVELS}) "),  # the stages (groundwork.entrypoint)
    re.compile(rf"^\d{{4}}/\d\d/\d\d \d\d:\d\d:\d\d ({LEVELS}) "),  # MLflow's own handler
    re.compile(rf"^({LEVELS}): "),  # DVC's errors and warnings
)
GLOG = re.compile(r"^([DIWEF])\d{4} \d\d:\d\d:\d\d\.\d+ ")  # torch's C++ side and torch.export: "W1205 11:32:35.16 ..."
GLOG_LEVELS = {"D": logging.DEBUG, "I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
PYTHON_WARNING = re.compile(r"^\S.*:\d+: \w*Warning: ")  # warnings.showwarning's first line
EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(: |$)")  # a traceback's last line: "ValueError: ..."
DVC_ADVICE = (
    "To track the changes with git, run:", "git add ", "To enable auto staging, run:",
    "dvc config core.autostage true", "Use `dvc push` to send your updates to remote storage.",
    "Generating lock file ", "Updating lock file ",
)


def level_of(line: str, previous: int = logging.INFO) -> int:
    """The level `line` was written at; an indented or empty line continues the line before it (a warning's source
    line, a traceback's frames), except that DVC's advice and the blank lines around it are DEBUG."""
    stripped = line.strip()
    if not stripped or stripped.startswith(DVC_ADVICE):
        return logging.DEBUG
    for pattern in LEVELLED:
        if match := pattern.match(line):
            return logging.getLevelNamesMapping()[match[1]]
    if match := GLOG.match(line):
        return GLOG_LEVELS[match[1]]
    if PYTHON_WARNING.match(line):
        return logging.WARNING
    if stripped.startswith("Traceback (most recent call last)"):
        return logging.ERROR
    if line[:1].isspace() or (previous >= logging.ERROR and EXCEPTION.match(line)):
        return previous
    return logging.INFO


def relay(logger: Any) -> Callable[[str], None]:
    """An `echo` for flows/repro.py that logs each line through `logger` (a Prefect run logger) at its level."""
    previous = logging.INFO

    def echo(line: str) -> None:
        nonlocal previous
        level = level_of(line, previous)
        if level != logging.DEBUG or line.strip():
            previous = level
        logger.log(level, "%s", line)

    return echo
