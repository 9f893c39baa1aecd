"""Does the search's quick score rank candidates as compress's full recipe does? Random candidates of the width grid
within an aggressive budget, each scored as the search scores it (adaptive BatchNorm, validation accuracy, no
fine-tuning) and then pruned and fine-tuned by compress's own recipe (the `searched` variant's rounds, distilled):
Kendall's tau between the quick score and the accuracy after the recipe, on the validation split (180 images, what
the search ranks on) and the test split (719 images), with a bootstrap interval over candidates.

Each candidate is a cell cached in --workdir when done, so the benchmark resumes where it stopped and prints the
table with the count it has. Needs the models and data of a pipeline run (`make run`). A candidate takes about a
minute on two cores.

Usage: PYTHONPATH=. .venv/bin/python bench/reward_rank.py --workdir /tmp/reward-rank [--candidates 40]
       [--macs-kept 0.15] [--seed 0] [--report-only]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau

from groundwork.compression.finetuning import channel_pruned, fine_tuner
from groundwork.data.atomic import write_json
from groundwork.data.datasets import load_dataset
from groundwork.models.checkpoint import load_model
from groundwork.params import load_params
from groundwork.search.env import PruningEnv
from groundwork.search.methods import random_candidate
from groundwork.search.scoring import AdaptiveBNScorer
from groundwork.tracking.runs import NullTracker
from groundwork.training.loop import loss_and_accuracy

CPU = torch.device("cpu")
BOOTSTRAP_DRAWS = 2000


def tau_interval(quick: np.ndarray, after: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """Kendall's tau and its 95% bootstrap interval, candidates resampled."""
    draws = []
    for _ in range(BOOTSTRAP_DRAWS):
        picked = rng.integers(len(quick), size=len(quick))
        if np.ptp(quick[picked]) > 0 and np.ptp(after[picked]) > 0:
            draws.append(kendalltau(quick[picked], after[picked]).statistic)
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(kendalltau(quick, after).statistic), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="where each candidate's result is cached")
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--macs-kept", type=float, default=0.15, help="the budget: share of the multiply-adds")
    parser.add_argument("--seed", type=int, default=0, help="draws the candidates")
    parser.add_argument("--models", type=Path, default=Path("models"), help="folder of a pipeline run's models")
    parser.add_argument("--report-only", action="store_true", help="print the table of the cached cells, run none")
    args = parser.parse_args()
    params = load_params()
    cfg = params.search
    data, _ = load_dataset(Path("data/processed/target.npz"), splits=("train", "val", "test", "pool"))
    transferred = args.models / "transfer.pt"
    model, _ = load_model(transferred)
    scorer = AdaptiveBNScorer(model, data["pool"].tensors()[0][:cfg.calibration_images], data["val"].tensors(),
                              device=CPU)
    env = PruningEnv(model.arch, scorer, budget=args.macs_kept, min_keep=cfg.min_keep,
                     width_multiple=cfg.width_multiple)
    rng = np.random.default_rng(args.seed)
    candidates = [random_candidate(env, rng) for _ in range(args.candidates)]  # drawn first: the same on resume
    args.workdir.mkdir(parents=True, exist_ok=True)
    tune = fine_tuner(params, data, load_model(transferred)[0], CPU, NullTracker())
    rows: list[dict[str, Any]] = []
    for index, keeps in enumerate(candidates):
        cell = args.workdir / f"budget{args.macs_kept}-seed{args.seed}-candidate{index}.json"
        if not cell.exists() and args.report_only:
            continue
        if not cell.exists():
            widths = env.widths(keeps)
            pruned = channel_pruned(load_model(transferred)[0], model.arch.with_widths(widths), params, tune,
                                    "searched")
            write_json(cell, {"widths": list(widths), "quick_val": scorer(keeps),
                              "after_val": loss_and_accuracy(pruned, *data["val"].tensors(), device=CPU)["accuracy"],
                              "after_test": loss_and_accuracy(pruned, *data["test"].tensors(),
                                                              device=CPU)["accuracy"]})
            print(f"candidate {index + 1}/{len(candidates)} done", flush=True)
        rows.append(json.loads(cell.read_text()))
    quick = np.array([row["quick_val"] for row in rows])
    print(f"\n{len(rows)} of {args.candidates} candidates at {args.macs_kept} of the multiply-adds (seed {args.seed}); "
          f"quick score {quick.min():.3f}-{quick.max():.3f}")
    print("| after the recipe, on | accuracy range | Kendall tau with the adaptive-BN score [95% CI] |")
    print("| --- | --- | --- |")
    for split in ("val", "test"):
        after = np.array([row[f"after_{split}"] for row in rows])
        tau, low, high = tau_interval(quick, after, np.random.default_rng(0))
        print(f"| {split} | {after.min():.4f}-{after.max():.4f} | {tau:.3f} [{low:.3f}, {high:.3f}] |")


if __name__ == "__main__":
    main()
