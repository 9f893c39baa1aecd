"""Per-layer pruning policies found by the learning agents against the three baselines, side by side in one run:
uniform shares, global ranking by BatchNorm scale, and random search with as many scored candidates as each agent.

Every method scores its candidates the same way (the transferred model pruned to the candidate's widths,
BatchNorm re-estimated on unlabelled target images, then scored as `search.reward` says), at each
budget (share of the prunable multiply-adds kept) and seed. Printed: the best candidate's validation accuracy
before fine-tuning, mean ± std over the seeds; then, for the first agent's, random search's and uniform's best
policies, test accuracy after compress's own fine-tuning recipe (rounds of channel removal, each fine-tuned and
distilled as the `structured` variant is). Needs the models of a pipeline run (`dvc repro transfer`).

Usage: PYTHONPATH=. .venv/bin/python bench/policy_search.py [--budgets 0.25 0.15] [--seeds 3] [--no-finetune]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from groundwork.compression.finetuning import channel_pruned, fine_tuner
from groundwork.data.datasets import load_dataset
from groundwork.models.checkpoint import load_model
from groundwork.params import load_params
from groundwork.search.compare import compare_methods
from groundwork.search.cost import macs_cost
from groundwork.search.scoring import make_scorer
from groundwork.tracking.runs import NullTracker
from groundwork.training.loop import loss_and_accuracy

CPU = torch.device("cpu")


def mean_std(values: list[float]) -> str:
    """Percent, mean ± population std (0 for one value)."""
    return f"{statistics.mean(values) * 100:5.1f} ± {statistics.pstdev(values) * 100:3.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.15],
                        help="shares of the prunable multiply-adds kept")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per budget (0, 1, ...)")
    parser.add_argument("--agents", nargs="+", default=["ddpg", "reinforce"], choices=["ddpg", "reinforce"])
    parser.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning of the best policies")
    parser.add_argument("--models", type=Path, default=Path("models"), help="folder of a pipeline run's models")
    args = parser.parse_args()
    params = load_params()
    data, _ = load_dataset(Path("data/processed/target.npz"), splits=("train", "val", "test", "pool"))
    transferred = args.models / "transfer.pt"
    model, _ = load_model(transferred)
    score = make_scorer(params, model, data, device=CPU)
    before: dict[tuple[float, str], list[float]] = {}
    after: dict[tuple[float, str], list[float]] = {}
    seconds: dict[str, list[float]] = {}
    tuned = ["uniform", "random", args.agents[0]]  # fine-tuning costs about a minute a policy: the first agent only
    for budget in args.budgets:
        for seed in range(args.seeds):
            best_policies: dict[str, list[int]] = {}
            for agent in args.agents:
                cfg = params.search.model_copy(update={"agent": agent, "macs_kept": budget})
                grid = params.model.width_grid(cfg.min_keep, cfg.width_multiple)
                started = time.perf_counter()
                results = compare_methods(model, cfg, score=score, cost=macs_cost(params.model, grid),
                                          budget=budget, seed=seed)
                seconds.setdefault(agent, []).append(time.perf_counter() - started)
                renamed = {agent if name == "agent" else name: result for name, result in results.items()}
                for name, result in renamed.items():
                    if name in best_policies:  # the baselines come with every agent's run: the same each time
                        continue
                    before.setdefault((budget, name), []).append(result.best_reward)
                    best_policies[name] = list(result.widths[result.best])
            if not args.no_finetune:
                seeded = params.model_copy(update={"seed": seed})
                tune = fine_tuner(seeded, data, load_model(transferred)[0], CPU, NullTracker())
                for name in tuned:
                    pruned = channel_pruned(load_model(transferred)[0], model.arch.with_widths(best_policies[name]),
                                            seeded, tune, "searched")
                    after.setdefault((budget, name), []).append(
                        loss_and_accuracy(pruned, *data["test"].tensors(), device=CPU)["accuracy"])
            print(f"budget {budget}, seed {seed} done", flush=True)

    methods = ["uniform", "global_ranking", "random", *args.agents]
    print(f"\nValidation accuracy of the best candidate before fine-tuning (%, mean ± std over {args.seeds} seeds; "
          f"{params.search.episodes} candidates for random search and each agent)")
    print(f"{'budget':>8s} " + " ".join(f"{name:>15s}" for name in methods))
    for budget in args.budgets:
        print(f"{budget:8.2f} " + " ".join(f"{mean_std(before[budget, name]):>15s}" for name in methods))
    if after:
        print("\nTest accuracy after fine-tuning (%, mean ± std; compress's structured recipe on each best policy)")
        print(f"{'budget':>8s} " + " ".join(f"{name:>15s}" for name in tuned))
        for budget in args.budgets:
            print(f"{budget:8.2f} " + " ".join(f"{mean_std(after[budget, name]):>15s}" for name in tuned))
    print("\nSearch time per run (agent, random search and the one-shot baselines), s: "
          + ", ".join(f"{agent} {statistics.mean(times):.0f}" for agent, times in seconds.items()))


if __name__ == "__main__":
    main()
