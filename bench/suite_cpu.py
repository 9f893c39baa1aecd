"""Where the test suite's CPU time goes: the suite as `make test` runs it (two xdist workers, one module at a time
each), with this file loaded as a pytest plugin in every worker. Around each test's whole protocol (setup, call,
teardown) the plugin records the CPU seconds of the worker itself and of the child processes it reaped in that time
(stage processes, `dvc`, servers a fixture stopped), and the wall time. The table sums them per module, the largest
first, then lists the costliest tests, then the totals against the whole run's CPU (`getrusage` of this process's
children: everything the suite started).

A long-lived process is charged to the test in which it is reaped: a session fixture's servers (the Prefect test
server, the warm stage server and the stages it forked) to the last test of their worker, a module fixture's to the
module's last test. Tests that only wait (on servers, schedulers, a browser) show much wall and little CPU.

Usage: PYTHONPATH=. .venv/bin/python bench/suite_cpu.py [--records DIR] [--report-only] [-- PYTEST ARGS]
(default pytest args: the whole suite, `-n 2 --dist loadscope`, as `make test`)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

RECORDS_ENV = "SUITE_CPU_RECORDS"


def _cpu_seconds() -> tuple[float, float]:
    """This process's CPU seconds and its reaped children's (user + system each)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """The plugin's one hook (a wrapper): one JSON line per test in the worker's own records file."""
    own, children = _cpu_seconds()
    started = time.monotonic()
    yield
    own_after, children_after = _cpu_seconds()
    record = {"test": item.nodeid, "own": own_after - own, "children": children_after - children,
              "wall": time.monotonic() - started}
    with (Path(os.environ[RECORDS_ENV]) / f"{os.getpid()}.jsonl").open("a") as records:
        records.write(json.dumps(record) + "\n")


def report(records: Path, total: dict[str, float] | None) -> None:
    """The per-module table, the costliest tests and the totals of the records in `records` (`total`: the whole
    run's CPU and wall seconds, when this process ran it)."""
    rows = [json.loads(line) for path in sorted(records.glob("*.jsonl")) for line in path.read_text().splitlines()]
    if not rows:
        sys.exit(f"no records in {records}")
    modules: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for row in rows:
        module = modules[row["test"].split("::")[0]]
        module[0] += 1
        module[1] += row["own"]
        module[2] += row["children"]
        module[3] += row["wall"]
    print("| module | tests | CPU s | in the worker | in its children | wall s (setup + call + teardown) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (count, own, children, wall) in sorted(modules.items(), key=lambda kv: -(kv[1][1] + kv[1][2])):
        print(f"| {name} | {count:.0f} | {own + children:.1f} | {own:.1f} | {children:.1f} | {wall:.1f} |")
    print("\n| costliest tests | CPU s | wall s |\n| --- | --- | --- |")
    for row in sorted(rows, key=lambda r: -(r["own"] + r["children"]))[:15]:
        print(f"| {row['test']} | {row['own'] + row['children']:.1f} | {row['wall']:.1f} |")
    counted = sum(row["own"] + row["children"] for row in rows)
    print(f"\n{len(rows)} tests: {counted:.1f} CPU s charged to tests", end="")
    if total:
        print(f"; the whole run {total['cpu']:.1f} CPU s ({total['user']:.1f} user + {total['system']:.1f} system), "
              f"{total['wall']:.1f} s wall (the rest: worker start-up, collection, xdist)")
    else:
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, default=None, help="folder for the per-worker records (kept)")
    parser.add_argument("--report-only", action="store_true", help="print the tables of --records, run nothing")
    parser.add_argument("pytest_args", nargs="*", default=["-n", "2", "--dist", "loadscope", "-q"],
                        help="after --: pytest's arguments")
    args = parser.parse_args()
    records = args.records or Path(tempfile.mkdtemp(prefix="suite-cpu-"))
    if args.report_only:
        report(records, None)
        return
    records.mkdir(parents=True, exist_ok=True)
    here = str(Path(__file__).resolve().parent)
    env = {**os.environ, RECORDS_ENV: str(records.resolve()),
           "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "suite_cpu", *args.pytest_args], env=env)
    wall = time.monotonic() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\nrecords in {records} (pytest exited {result.returncode})\n")
    report(records, {"cpu": children.ru_utime + children.ru_stime, "user": children.ru_utime,
                     "system": children.ru_stime, "wall": wall})


if __name__ == "__main__":
    main()
