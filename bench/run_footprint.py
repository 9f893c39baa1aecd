"""What one `make run` leaves for a person to read: the distinct MLflow metric keys across all its runs (and the
runs, per stage), and the lines its output holds, by where they come from, with the warnings among them.

Usage, in a project where `make run` ran once (its store holds that run alone) with its output kept:
    make run 2>&1 | tee run.log; PYTHONPATH=. .venv/bin/python bench/run_footprint.py --log run.log
Prints markdown tables. The install's lines (pip, when `make` created the environment first) are counted apart:
they are this machine's pip configuration, not the project's.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
from collections import Counter
from pathlib import Path

FLOW_START = re.compile(r"/bin/groundwork run$")  # make echoes the command; the flow's lines follow it
SOURCE = re.compile(r"\| (?:INFO|WARNING|ERROR|DEBUG|CRITICAL) +\| (Task run '[^']+'|Flow run|prefect)")
WARNING = re.compile(r"\bWARNING\b|Warning:")


def metric_keys(store: Path) -> tuple[int, Counter[str], int]:
    """Distinct metric keys in the store, the distinct keys of each stage (item runs counted with their stage),
    and the number of runs."""
    with sqlite3.connect(store) as db:
        keys = db.execute("select count(distinct key) from metrics").fetchone()[0]
        rows = db.execute(
            "select coalesce(i.value, s.value, 'parent'), count(distinct m.key) from metrics m "
            "left join tags s on s.run_uuid = m.run_uuid and s.key = 'stage' "
            "left join tags i on i.run_uuid = m.run_uuid and i.key = 'item_of' group by 1").fetchall()
        runs = db.execute("select count(*) from runs").fetchone()[0]
    return keys, Counter(dict(rows)), runs


def output_lines(log: Path) -> tuple[int, Counter[str], list[str]]:
    """The install's lines, the flow's lines by source (task, flow, Prefect, other), and its warning lines."""
    lines = log.read_text(errors="replace").splitlines()
    start = next((index for index, line in enumerate(lines) if FLOW_START.search(line)), -1)
    flow = lines[start + 1:]
    sources = Counter(match.group(1) if (match := SOURCE.search(line)) else "other (tracebacks, bars)"
                      for line in flow)
    return start + 1, sources, [line for line in flow if WARNING.search(line)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."), help="the project `make run` ran in")
    parser.add_argument("--log", type=Path, required=True, help="what `make run` printed")
    args = parser.parse_args()
    keys, per_stage, runs = metric_keys(args.project / "mlflow.db")
    installed, sources, warnings = output_lines(args.log)
    print(f"| MLflow | count |\n| --- | ---: |\n| distinct metric keys | {keys} |\n| runs | {runs} |")
    for stage, count in per_stage.most_common():
        print(f"| keys of {stage} | {count} |")
    print(f"\n| `make run` output | lines |\n| --- | ---: |\n| the install (before `groundwork run`) | {installed} |")
    for source, count in sources.most_common():
        print(f"| {source} | {count} |")
    print(f"| **the flow's lines** | **{sum(sources.values())}** |\n| warnings among them | {len(warnings)} |")
    for line in warnings:
        print(f"\n    {line[:160]}")


if __name__ == "__main__":
    main()
