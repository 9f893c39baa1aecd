"""One search: the agent params name and the three baselines, each scoring candidates for the same model, budget
and validation split through one environment and one scorer, so their rewards are comparable (and a candidate
two methods both found is scored once)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from groundwork.models.digitnet import DigitNet
from groundwork.params.compression import SearchParams
from groundwork.search.agents import make_agent
from groundwork.search.env import FEATURES, PruningEnv
from groundwork.search.methods import OnEpisode, SearchResult, global_ranking, random_search, run_agent, uniform
from groundwork.search.scoring import AdaptiveBNScorer
from groundwork.training.loop import derived_seed

BASELINES = ("uniform", "global_ranking", "random")
MethodEpisode = Callable[[str, int, float, Sequence[float]], None]  # (method, episode, reward, shares kept)


def compare_methods(model: DigitNet, cfg: SearchParams, *, calibration: torch.Tensor,
                    val: tuple[torch.Tensor, torch.Tensor], seed: int, device: torch.device,
                    on_episode: MethodEpisode | None = None) -> dict[str, SearchResult]:
    """Every method's scored candidates, keyed `agent` (the params' agent) and by baseline name. The agent and
    random search score `cfg.episodes` candidates each; `on_episode(method, episode, reward, keeps)`."""
    scorer = AdaptiveBNScorer(model, calibration, val, device=device)
    env = PruningEnv(model.arch, scorer, budget=cfg.macs_kept, min_keep=cfg.min_keep,
                     width_multiple=cfg.width_multiple)

    def report(method: str) -> OnEpisode | None:
        if on_episode is None:
            return None
        return lambda episode, reward, keeps: on_episode(method, episode, reward, keeps)

    agent = make_agent(cfg.agent, len(FEATURES), seed=derived_seed(seed, "search", cfg.agent))
    return {
        "uniform": uniform(env),
        "global_ranking": global_ranking(env, model),
        "random": random_search(env, candidates=cfg.episodes, seed=derived_seed(seed, "search", "random"),
                                on_episode=report("random")),
        "agent": run_agent(env, agent, cfg.agent, episodes=cfg.episodes, warmup=cfg.warmup_episodes,
                           seed=derived_seed(seed, "search", "episodes"), on_episode=report("agent")),
    }
