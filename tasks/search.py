"""search: each layer's share of channels to keep, learnt by a reinforcement-learning agent (AMC, He et al. 2018)
under a budget (of latency on this machine, by the latency stage's table, or of multiply-adds), beside the
baselines that often beat such agents: one share for every layer, global ranking by BatchNorm scale, and random
search scoring as many candidates as the agent. Every candidate is the transferred model pruned to its widths,
BatchNorm re-estimated on unlabelled target images, and scored on the validation split as `search.reward` says:
after a one-epoch distillation fine-tune, in int8, or at once in fp32 (groundwork.search.scoring). The agent's
best policy is written for compress (its `searched` variant);
the table of rewards per episode and a plot show how the agent did against each baseline."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from groundwork.data.atomic import atomic_path
from groundwork.data.datasets import load_dataset
from groundwork.entrypoint import stage_cli
from groundwork.models.checkpoint import load_model
from groundwork.params import Params
from groundwork.plots import search_rewards
from groundwork.search.compare import BASELINES, search_budget
from groundwork.search.fanout import SEARCH_SPLITS, search_methods
from groundwork.search.latency import LatencyTable, read_latency_table
from groundwork.search.methods import SearchResult
from groundwork.search.policy import write_policy
from groundwork.tracking.runs import NullTracker, RunLog
from groundwork.training.distributed import resolve_device
from groundwork.training.jobs import worker_count

log = logging.getLogger(__name__)


def reward_table(results: dict[str, SearchResult]) -> pd.DataFrame:
    """One row per episode: the agent's and random search's reward, best so far, multiply-adds kept and cost in
    the budget's units; the one-shot baselines (uniform, global ranking) as constant columns, so a plot draws them
    as lines."""
    table = pd.DataFrame({"episode": range(len(results["agent"].rewards))})
    for method in ("agent", "random"):
        result = results[method]
        table[f"{method}_reward"] = result.rewards
        table[f"{method}_best"] = result.best_so_far()
        table[f"{method}_macs_kept"] = result.macs_kept
        table[f"{method}_cost"] = result.costs
    for method in ("uniform", "global_ranking"):
        table[method] = results[method].best_reward
    return table


def summary(results: dict[str, SearchResult], table: LatencyTable) -> dict[str, dict[str, Any]]:
    """Per method: its best reward, the episode it came in, that policy's shares, widths, each cell's precision in
    searched_int8, multiply-adds kept and cost in the budget's units, and the latency table's estimate of that
    network as searched_int8 would ship it, in milliseconds per call at each of the table's batches."""
    def estimate(widths: tuple[int, ...], precisions: list[str]) -> dict[str, float]:
        return {f"b{batch}": round(table.network_ms(widths, precisions, batch), 4) for batch in table.batches}

    return {method: {"best_reward": result.best_reward, "best_episode": result.best,
                     "macs_kept": result.macs_kept[result.best], "cost": result.costs[result.best],
                     "candidates": len(result.rewards),
                     "keeps": [round(keep, 4) for keep in result.best_policy],
                     "widths": list(result.widths[result.best]), "precisions": result.best_precisions,
                     "int8_latency_ms": estimate(result.widths[result.best], result.best_precisions)}
            for method, result in results.items()}


def run(params: Params, *, transferred: Path, target: Path, latency: Path, policy_out: Path, table_out: Path,
        plot_out: Path, tracker: RunLog | None = None) -> dict[str, Any]:
    """Search, write the agent's best policy, the reward table (CSV) and its plot (PNG); return the comparison."""
    tracker = tracker or NullTracker()
    cfg = params.search
    latency_table = read_latency_table(latency)
    budget = search_budget(params, latency_table)
    if budget.limit > budget.asked:
        key = f"{cfg.budget_of}_kept"
        log.warning("search.%s=%s asks for %s, below the cheapest network of the width grid (%s estimated): "
                    "searching at that one instead", key, getattr(cfg, key), budget.cost.describe(budget.asked),
                    budget.cost.describe(budget.limit))
    # pool: unlabelled images for BatchNorm (and distillation); train: the distilled reward's labels
    data, digest = load_dataset(target, splits=SEARCH_SPLITS)
    tracker.log_dataset("target", target, digest, context="input")
    model, _ = load_model(transferred)
    started = time.perf_counter()
    results = search_methods(params, model, data, transferred=transferred, target=target, budget=budget,
                             workers=worker_count(cfg.workers, cfg.episodes, resolve_device(params.device)))
    seconds = time.perf_counter() - started
    methods = summary(results, latency_table)
    agent = methods["agent"]
    for method in BASELINES:
        log.info("%-15s best validation accuracy %.4f, widths %s", method, methods[method]["best_reward"],
                 methods[method]["widths"])
    log.info("%-15s best validation accuracy %.4f, widths %s (episode %d of %d)", cfg.agent, agent["best_reward"],
             agent["widths"], agent["best_episode"] + 1, cfg.episodes)

    table = reward_table(results)
    with atomic_path(table_out) as tmp:
        table.to_csv(tmp, index=False)
    search_rewards(plot_out, table, agent=cfg.agent, budget=budget.describe())
    write_policy(policy_out, agent=cfg.agent, budget=budget.describe(), keeps=results["agent"].best_policy,
                 widths=agent["widths"], precisions=agent["precisions"], reward=agent["best_reward"])
    best_widths = list(zip(*results["agent"].best_widths_so_far(), strict=True))  # per layer, per episode
    tracker.log_series({**{f"methods.{method}.episode_{column}": table[f"{method}_{column}"].tolist()
                           for method in ("agent", "random") for column in ("reward", "best", "macs_kept", "cost")},
                        **{f"methods.agent.episode_best_width_layer{layer}": list(widths)
                           for layer, widths in enumerate(best_widths)}})
    tracker.log_artifact(plot_out, "plots")
    tracker.log_artifact(table_out, "search")
    tracker.log_artifact(policy_out, "search")
    return {
        "agent": cfg.agent,
        "budget": budget.describe(),
        "budget_of": cfg.budget_of,
        "budget_limit": budget.limit,
        "budget_asked": budget.asked,
        "reward": cfg.reward,
        "episodes": cfg.episodes,
        "seconds": round(seconds, 1),
        "agent_minus_uniform_points": round((agent["best_reward"] - methods["uniform"]["best_reward"]) * 100, 2),
        "agent_minus_random_points": round((agent["best_reward"] - methods["random"]["best_reward"]) * 100, 2),
        "methods": methods,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("search", __doc__, run, argv, paths={
        "transferred": "transferred checkpoint (.pt)",
        "target": "target dataset (.npz) with its val and pool splits",
        "latency": "the latency table (.csv) the latency stage wrote on this machine",
        "policy_out": "the agent's best per-layer policy (.json) to write, for compress",
        "table_out": "rewards per episode of every method (.csv) to write",
        "plot_out": "reward per episode against the baselines (.png) to write",
    })


if __name__ == "__main__":
    sys.exit(main())
