"""The default pipeline trained in fp32 against the same pipeline with `precision: auto` (bf16 autocast where the
CPU computes bf16 natively), side by side over several seeds: the decision on `auto` as the default.

Each cell (seed, precision) is a fresh copy of the project whose stages `dvc repro` runs one at a time, each timed.
A cell is cached in --workdir when done (its stage seconds and the results it compares), so the benchmark resumes
where it stopped and prints the pairs it has with their count.

Compared per seed, on the same test images (the seed draws the splits, so each seed has its own): every evaluated
variant's accuracy, paired (exact McNemar), and pooled over seeds as the mean difference with a bootstrap interval
that resamples images within each seed; the budget sweep's mean accuracy per method; each stage's seconds and the
training stages' ratio.

Usage: PYTHONPATH=. .venv/bin/python bench/precision.py --workdir /tmp/precision [--seeds 42 43 44]
A cell takes the time of one `make run` (about 10 to 20 minutes on two cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flows.repro import stage_environment, stage_order
from groundwork.evaluation.statistics import CONFIDENCE, paired_test
from groundwork.forkserver import SERVER_ENV
from groundwork.project import copy_project, deep_update, project_params_dict
from groundwork.training.precision import bf16_native

PRECISIONS = ("fp32", "auto")
TRAINED_STAGES = ("pretrain", "transfer", "budget", "compress")  # those whose steps `precision` changes
BUDGET_METHODS = ("scratch", "transfer", "semi_supervised")
BOOTSTRAP_DRAWS = 10_000


def run_cell(root: Path, seed: int, precision: str) -> dict[str, Any]:
    """One pipeline run in a fresh copy at `root`, stage by stage; what the comparison needs from it."""
    shutil.rmtree(root, ignore_errors=True)  # what a killed run of this cell left: it starts again from nothing
    root.mkdir(parents=True)
    copy_project(root, deep_update(project_params_dict(), {"seed": seed, "precision": precision}))
    env = {key: value for key, value in stage_environment({}).items() if key != SERVER_ENV}
    seconds: dict[str, float] = {}
    for stage in stage_order(root):
        started = time.perf_counter()
        result = subprocess.run(["python", "-m", "dvc", "repro", "--single-item", stage], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise SystemExit(f"stage {stage} failed in {root} (exit {result.returncode}):\n{result.stderr[-3000:]}")
        seconds[stage] = time.perf_counter() - started
        print(f"  seed {seed}, {precision}: {stage} {seconds[stage]:.1f} s", flush=True)
    used = {stage: json.loads((root / "reports" / f"{stage}.json").read_text()).get("training_precision")
            for stage in TRAINED_STAGES}
    return {"seconds": seconds, "training_precision": used}


def results_of(root: Path) -> dict[str, Any]:
    """What is compared, read from a finished cell's reports: every variant's test predictions, the source test
    accuracy after pretraining, and the budget sweep's mean accuracy per budget and method."""
    reports = root / "reports"
    predictions = {path.stem: pd.read_csv(path) for path in sorted((reports / "predictions").glob("*.csv"))}
    budget = pd.read_csv(reports / "budget.csv", dtype={"budget": str})
    means = {f"{row['budget']} labels/class, {method}": float(row[f"{method}_accuracy_mean"])
             for _, row in budget.iterrows() for method in BUDGET_METHODS}
    pretrain = json.loads((reports / "pretrain.json").read_text())["source_test_accuracy"]
    return {"predictions": predictions, "budget": means, "source_test_accuracy": pretrain}


def cell(workdir: Path, seed: int, precision: str) -> dict[str, Any]:
    """The cached cell, or run it and cache it (written whole, after the run: a killed run leaves no cell), with
    its results read from its folder."""
    cached = workdir / f"seed{seed}-{precision}.json"
    if cached.exists():
        return json.loads(cached.read_text()) | results_of(workdir / f"seed{seed}-{precision}")
    print(f"seed {seed}, precision {precision}: running", flush=True)
    result = run_cell(workdir / f"seed{seed}-{precision}", seed, precision)
    partial = cached.with_suffix(".part")
    partial.write_text(json.dumps(result))
    partial.replace(cached)
    return result | results_of(workdir / f"seed{seed}-{precision}")


def correct(run: dict[str, Any], variant: str) -> np.ndarray:
    table = run["predictions"][variant]
    return (table["actual"] == table["predicted"]).to_numpy()


def pooled_interval(differences: list[np.ndarray], seed: int = 0) -> tuple[float, float, float]:
    """Mean over seeds of each seed's accuracy difference (points), and its bootstrap interval: images resampled
    within each seed. `differences` holds, per seed, bf16-correct minus fp32-correct per image (-1, 0, 1)."""
    rng = np.random.default_rng(seed)
    mean = float(np.mean([d.mean() for d in differences])) * 100
    draws = np.zeros(BOOTSTRAP_DRAWS)
    for per_image in differences:
        picks = rng.integers(0, len(per_image), size=(BOOTSTRAP_DRAWS, len(per_image)))
        draws += per_image[picks].mean(axis=1)
    draws = draws / len(differences) * 100
    tail = (1 - CONFIDENCE) / 2 * 100
    return mean, float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))


def report(pairs: dict[int, dict[str, dict[str, Any]]]) -> None:
    seeds = sorted(pairs)
    print(f"\n{len(seeds)} complete pair(s) of cells (seeds {', '.join(map(str, seeds))})")
    first = pairs[seeds[0]]
    print("training precision used:", {p: first[p]["training_precision"]["pretrain"] for p in PRECISIONS})

    # each pair's own ratio: pairs that ran while the machine was busy elsewhere show it in their seconds
    print("\n| stage | " + " | ".join(f"seed {s}: fp32 s / auto s (ratio)" for s in seeds) + " |")
    print("| --- |" + " --- |" * len(seeds))
    stage_sets = {stage: (stage,) for stage in first["fp32"]["seconds"]}
    stage_sets |= {"**training stages**": TRAINED_STAGES, "**whole run**": tuple(first["fp32"]["seconds"])}
    for label, stages in stage_sets.items():
        cells = []
        for s in seeds:
            fp32, auto = (sum(pairs[s][p]["seconds"][stage] for stage in stages) for p in PRECISIONS)
            cells.append(f"{fp32:.1f} / {auto:.1f} ({auto / fp32:.2f}x)")
        print(f"| {label} | " + " | ".join(cells) + " |")

    header = " | ".join(f"seed {s}: fp32 / auto (losses-wins, p)" for s in seeds)
    print(f"\n| variant | {header} | auto - fp32, mean over seeds [{CONFIDENCE:.0%} interval] |")
    print("| --- |" + " --- |" * (len(seeds) + 1))
    for variant in first["fp32"]["predictions"]:
        cells, differences = [], []
        for s in seeds:
            reference, model = correct(pairs[s]["fp32"], variant), correct(pairs[s]["auto"], variant)
            test = paired_test(reference, model)
            differences.append(model.astype(float) - reference.astype(float))
            cells.append(f"{reference.mean():.2%} / {model.mean():.2%} ({test.losses}-{test.wins}, "
                         f"p {test.p_value:.2f})")
        mean, low, high = pooled_interval(differences)
        print(f"| {variant} | {' | '.join(cells)} | {mean:+.2f} [{low:+.2f}, {high:+.2f}] |")

    print("\n| source test accuracy after pretraining | " + " | ".join(
        f"seed {s}: {pairs[s]['fp32']['source_test_accuracy']:.2%} / {pairs[s]['auto']['source_test_accuracy']:.2%}"
        for s in seeds) + " |")
    print("\n| budget sweep, mean over draws | " + " | ".join(f"seed {s}: fp32 / auto" for s in seeds)
          + " | auto - fp32, mean over seeds (points) |")
    print("| --- |" + " --- |" * (len(seeds) + 1))
    for item in first["fp32"]["budget"]:
        values = [(pairs[s]["fp32"]["budget"][item], pairs[s]["auto"]["budget"][item]) for s in seeds]
        change = np.mean([auto - fp32 for fp32, auto in values]) * 100
        print(f"| {item} | " + " | ".join(f"{fp32:.2%} / {auto:.2%}" for fp32, auto in values)
              + f" | {change:+.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="cells are cached here; rerun to resume")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--report-only", action="store_true", help="print the cached pairs; run nothing")
    args = parser.parse_args()
    import torch

    if not bf16_native(torch.device("cpu")):
        print("this CPU has no native bf16: `auto` trains in fp32 here, so both cells would be the same run")
    args.workdir.mkdir(parents=True, exist_ok=True)
    pairs: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in args.seeds:
        cached = [args.workdir / f"seed{seed}-{p}.json" for p in PRECISIONS]
        if args.report_only and not all(path.exists() for path in cached):
            continue
        pairs[seed] = {p: cell(args.workdir, seed, p) for p in PRECISIONS}
    if not pairs:
        raise SystemExit(f"no complete pair of cells in {args.workdir}")
    report(pairs)


if __name__ == "__main__":
    main()
