"""Two default runs side by side, stage by stage: each `make run` log's "stage 'x' ran in N s" lines (the flow's own
timing of each stage's command) and its flow run's begin and end, as a table of seconds and their ratio. For a
comparison of two commits on one machine: clone each, install it, and run `make run` in each, one after the other
on an otherwise idle machine, keeping the logs.

`--same-work STAGE ...` adds a subtotal of the stages whose work both commits share (the same params), the figure a
speed-up is claimed on. `--results BASELINE_DIR CANDIDATE_DIR` (each run's project folder) then says whether the
two runs' results differ beyond noise: every variant both evaluated, paired on the same test images (McNemar, and
the candidate's gain with its 95% interval), and the label-budget sweep's cells (Welch's t-test over the draws).

Usage: python bench/flow_stages.py BASELINE.log CANDIDATE.log [--names BASELINE CANDIDATE]
       [--same-work STAGE ...] [--results BASELINE_DIR CANDIDATE_DIR]
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime
from pathlib import Path

import pandas as pd
from scipy import stats

from groundwork.evaluation.statistics import paired_test
from groundwork.training.label_budget import METHODS

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


def variants_side_by_side(base: Path, new: Path, names: list[str]) -> None:
    """Every variant both runs evaluated: accuracy on the same test images, paired."""
    print(f"\n| variant | {names[0]} % | {names[1]} % | {names[1]} gain, points [95% interval] | McNemar p |")
    print("| --- | --- | --- | --- | --- |")
    for path in sorted((base / "reports/predictions").glob("*.csv")):
        if not (other := new / "reports/predictions" / path.name).exists():
            continue
        old, cand = pd.read_csv(path), pd.read_csv(other)
        if not old["actual"].equals(cand["actual"]):
            raise SystemExit(f"{path.name}: the two runs' test images differ")
        old_ok, new_ok = (frame["actual"] == frame["predicted"] for frame in (old, cand))
        test = paired_test(old_ok.to_numpy(), new_ok.to_numpy())
        print(f"| {path.stem} | {100 * old_ok.mean():.2f} | {100 * new_ok.mean():.2f} | {-test.loss_points:+.2f} "
              f"[{-test.loss_high_points:+.2f}, {-test.loss_low_points:+.2f}] | {test.p_value:.2f} |")


def budget_side_by_side(base: Path, new: Path, names: list[str]) -> None:
    """The label-budget sweep's mean accuracy per budget and method, Welch's t-test over the draws (none where a
    budget has one draw)."""
    old, cand = (pd.read_csv(folder / "reports/budget.csv").set_index("budget") for folder in (base, new))
    print(f"\n| labels/class | method | {names[0]} % (draws) | {names[1]} % (draws) | difference, points | "
          "Welch p |")
    print("| --- | --- | --- | --- | --- | --- |")
    for budget in old.index.intersection(cand.index):
        a, b = old.loc[budget], cand.loc[budget]
        for method in METHODS:
            mean, std = f"{method}_accuracy_mean", f"{method}_accuracy_std"
            p_value = "(one draw)"
            if min(a["draws"], b["draws"]) > 1:
                welch = stats.ttest_ind_from_stats(a[mean], a[std], a["draws"], b[mean], b[std], b["draws"],
                                                   equal_var=False)
                p_value = f"{welch.pvalue:.2f}"
            print(f"| {budget} | {method} | {100 * a[mean]:.2f} ± {100 * a[std]:.2f} ({int(a['draws'])}) | "
                  f"{100 * b[mean]:.2f} ± {100 * b[std]:.2f} ({int(b['draws'])}) | {100 * (b[mean] - a[mean]):+.2f} | "
                  f"{p_value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", type=Path)
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--names", nargs=2, default=["baseline", "candidate"], help="the columns' titles")
    parser.add_argument("--same-work", nargs="+", default=[], metavar="STAGE",
                        help="stages whose work both commits share: their subtotal")
    parser.add_argument("--results", nargs=2, type=Path, metavar=("BASELINE_DIR", "CANDIDATE_DIR"),
                        help="the two runs' project folders: their results side by side")
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
    def subtotal(label: str, stages: list[str]) -> None:
        old_total, new_total = sum(base[s] for s in stages), sum(new[s] for s in stages)
        print(f"| {label} | {old_total:.1f} | {new_total:.1f} | {new_total / old_total:.2f}x |")

    both = [stage for stage in base if stage in new]
    subtotal("the stages both ran", both)
    if args.same_work:
        if missing := [stage for stage in args.same_work if stage not in both]:
            raise SystemExit(f"--same-work: {', '.join(missing)} did not run in both logs")
        subtotal(f"the same work ({', '.join(args.same_work)})", args.same_work)
    print(f"| the flow run, first line to final state | {flows[0]:.1f} | {flows[1]:.1f} | "
          f"{flows[1] / flows[0]:.2f}x |")
    if args.results:
        variants_side_by_side(*args.results, args.names)
        budget_side_by_side(*args.results, args.names)


if __name__ == "__main__":
    main()
