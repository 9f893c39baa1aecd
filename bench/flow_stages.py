"""Two default runs side by side, stage by stage: each `make run` log's "stage 'x' ran in N s" lines (the flow's own
timing of each stage's command) and its flow run's begin and end, as a table of seconds and their ratio. For a
comparison of two commits on one machine: clone each, install it, and run `make run` in each, one after the other
on an otherwise idle machine, keeping the logs.

Usage: python bench/flow_stages.py BASELINE.log CANDIDATE.log [--names BASELINE CANDIDATE]
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime
from pathlib import Path

STAGE_LINE = re.compile(r"stage '(\w+)' ran in ([\d.]+) s")
FLOW_LINE = r"(\d\d:\d\d:\d\d\.\d+) \| INFO    \| Flow run '[\w-]+' - {}"


def stage_seconds(log: str) -> dict[str, float]:
    """Each stage's seconds, in the order the flow ran them."""
    return {name: float(seconds) for name, seconds in STAGE_LINE.findall(log)}


def flow_seconds(log: str, path: Path) -> float:
    """From the flow run's first line to its final state."""
    def at(what: str) -> datetime:
        found = re.search(FLOW_LINE.format(what), log)
        if found is None:
            raise SystemExit(f"{path}: no flow run line '{what}': not a `make run` log")
        return datetime.strptime(found.group(1), "%H:%M:%S.%f")
    return (at("Finished in state") - at("Beginning flow run")).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", type=Path)
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--names", nargs=2, default=["baseline", "candidate"], help="the columns' titles")
    args = parser.parse_args()
    paths = (args.baseline, args.candidate)
    logs = [path.read_text() for path in paths]
    base, new = (stage_seconds(log) for log in logs)
    flows = [flow_seconds(log, path) for log, path in zip(logs, paths, strict=True)]
    print(f"| stage | {args.names[0]} s | {args.names[1]} s | {args.names[1]} / {args.names[0]} |")
    print("| --- | --- | --- | --- |")
    for stage in dict.fromkeys([*base, *new]):
        old_s, new_s = base.get(stage), new.get(stage)
        ratio = f"{new_s / old_s:.2f}x" if old_s and new_s else ""
        print(f"| {stage} | {old_s if old_s is not None else '(none)'} | "
              f"{new_s if new_s is not None else '(none)'} | {ratio} |")
    both = [stage for stage in base if stage in new]
    old_total, new_total = sum(base[s] for s in both), sum(new[s] for s in both)
    print(f"| the stages both ran | {old_total:.1f} | {new_total:.1f} | {new_total / old_total:.2f}x |")
    print(f"| the flow run, first line to final state | {flows[0]:.1f} | {flows[1]:.1f} | "
          f"{flows[1] / flows[0]:.2f}x |")


if __name__ == "__main__":
    main()
