"""Which of the search's rewards ranks candidates as compress's full recipe does? Random candidates of the width grid
within an aggressive budget, each scored by both rewards of `search.reward` (adaptive_bn: validation accuracy after
BatchNorm recalibration, no fine-tuning; distilled: after `search.reward_epochs` of distillation, in int8) and then
pruned and fine-tuned by compress's own recipe (the `searched` variant's rounds, distilled): Kendall's tau between
each reward and the accuracy after the recipe, on the validation split (180 images, what the search ranks on, and
what both rewards are measured on, so their errors are shared with it) and the test split (719 images, the fair
one), with a bootstrap interval over candidates, and the bootstrap interval of the difference of the two taus
(the same candidates resampled for both).

Each candidate is a cell cached in --workdir when done, so the benchmark resumes where it stopped and prints the
table with the count it has; a cell that lacks a reward gets it added. Needs the models and data of a pipeline run
(`make run`). A candidate takes about a minute on two cores (the rewards, under a second of it).

Usage: PYTHONPATH=. .venv/bin/python bench/reward_rank.py --workdir /tmp/reward-rank [--candidates 40]
       [--macs-kept 0.15] [--seed 0] [--reward-epochs N] [--report-only]
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
from groundwork.search.compare import search_budget
from groundwork.search.env import PruningEnv
from groundwork.search.methods import random_candidate
from groundwork.search.scoring import AdaptiveBNScorer, DistilledScorer
from groundwork.tracking.runs import NullTracker
from groundwork.training.loop import loss_and_accuracy

CPU = torch.device("cpu")
BOOTSTRAP_DRAWS = 2000




def taus(rewards: dict[str, np.ndarray], after: np.ndarray, rng: np.random.Generator
         ) -> dict[str, tuple[float, float, float]]:
    """Kendall's tau of each reward with `after`, and of distilled minus adaptive_bn, each with its 95% bootstrap
    interval (candidates resampled, the same draws for every reward: the difference is paired)."""
    def tau(reward: np.ndarray, picked: np.ndarray) -> float:
        return float(kendalltau(reward[picked], after[picked]).statistic)

    everyone = np.arange(len(after))
    point = {name: tau(reward, everyone) for name, reward in rewards.items()}
    point["difference"] = point["distilled"] - point["adaptive_bn"]
    draws: dict[str, list[float]] = {name: [] for name in point}
    for _ in range(BOOTSTRAP_DRAWS):
        picked = rng.integers(len(after), size=len(after))
        if np.ptp(after[picked]) == 0 or any(np.ptp(reward[picked]) == 0 for reward in rewards.values()):
            continue
        drawn = {name: tau(reward, picked) for name, reward in rewards.items()}
        for name, value in {**drawn, "difference": drawn["distilled"] - drawn["adaptive_bn"]}.items():
            draws[name].append(value)
    return {name: (point[name], *np.percentile(draws[name], [2.5, 97.5])) for name in point}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="where each candidate's result is cached")
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--macs-kept", type=float, default=0.15, help="the budget: share of the multiply-adds")
    parser.add_argument("--seed", type=int, default=0, help="draws the candidates")
    parser.add_argument("--reward-epochs", type=int, default=None,
                        help="epochs of the distilled reward's fine-tune (default: search.reward_epochs)")
    parser.add_argument("--models", type=Path, default=Path("models"), help="folder of a pipeline run's models")
    parser.add_argument("--report-only", action="store_true", help="print the table of the cached cells, run none")
    args = parser.parse_args()
    params = load_params()
    if args.reward_epochs is not None:
        params = params.model_copy(update={"search": params.search.model_copy(
            update={"reward_epochs": args.reward_epochs})})
    cfg = params.search
    distilled_key = f"distilled_val_{cfg.reward_epochs}_epochs"  # cells keep the score of every length tried
    data, _ = load_dataset(Path("data/processed/target.npz"), splits=("train", "val", "test", "pool"))
    transferred = args.models / "transfer.pt"
    model, _ = load_model(transferred)
    scorer = AdaptiveBNScorer(model, data["pool"].tensors()[0][:cfg.calibration_images], data["val"].tensors(),
                              device=CPU)
    distilled = DistilledScorer(model, params, data, device=CPU)
    # the multiply-add budget over the search's grid, each layer in the precision searched_int8 ships it in
    macs = params.model_copy(update={"search": cfg.model_copy(update={"budget_of": "macs", "precision": "int8",
                                                                      "macs_kept": args.macs_kept})})
    env = PruningEnv(model.arch, scorer, budget=args.macs_kept, cost=search_budget(macs, None).cost)
    rng = np.random.default_rng(args.seed)
    # drawn first: the same on resume (each layer int8, the ends as compress ships them: the widths are drawn)
    candidates = [random_candidate(env, rng)[0] for _ in range(args.candidates)]
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
            write_json(cell, {"widths": list(widths), "quick_val": scorer(keeps, env.cells()),
                              "after_val": loss_and_accuracy(pruned, *data["val"].tensors(), device=CPU)["accuracy"],
                              "after_test": loss_and_accuracy(pruned, *data["test"].tensors(),
                                                              device=CPU)["accuracy"]})
            print(f"candidate {index + 1}/{len(candidates)} done", flush=True)
        row = json.loads(cell.read_text())
        if distilled_key not in row and not args.report_only:
            row[distilled_key] = distilled(keeps, env.cells())
            write_json(cell, row)
        rows.append(row)
    rows = [row for row in rows if distilled_key in row]
    rewards = {name: np.array([row[key] for row in rows])
               for name, key in {"adaptive_bn": "quick_val", "distilled": distilled_key}.items()}
    print(f"\n{len(rows)} of {args.candidates} candidates at {args.macs_kept} of the multiply-adds (seed {args.seed}), "
          f"distilled reward after {cfg.reward_epochs} epoch(s); "
          + "; ".join(f"{name} {reward.min():.3f}-{reward.max():.3f}" for name, reward in rewards.items()))
    print("| after the recipe, on | accuracy range | Kendall tau: adaptive_bn [95% CI] | distilled [95% CI] "
          "| distilled - adaptive_bn [95% CI] |")
    print("| --- | --- | --- | --- | --- |")
    for split in ("val", "test"):
        after = np.array([row[f"after_{split}"] for row in rows])
        found = taus(rewards, after, np.random.default_rng(0))
        print(f"| {split} | {after.min():.4f}-{after.max():.4f} | "
              + " | ".join(f"{tau:.3f} [{low:.3f}, {high:.3f}]" for tau, low, high in found.values()) + " |")


if __name__ == "__main__":
    main()
