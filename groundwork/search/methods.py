"""The ways a per-layer policy is found, each scored by the same environment (and so the same reward): the learning
agents, and the three baselines that usually beat them in the literature. The one-shot baselines ship every layer
in its default precision (int8, the ends as compress keeps them); random search draws each precision the grid
leaves open (`search.precision: mixed`), as the agents choose it.

  uniform         every layer keeps the same share, the largest that meets the budget (one candidate)
  global_ranking  channels ranked across all layers by their BatchNorm scale |gamma| (Network Slimming's
                  criterion, comparable across layers because BatchNorm normalises them), the weakest removed
                  until the budget is met (one candidate); a layer without BatchNorm ranks its units by filter
                  norm over the layer's mean filter norm (raw norms differ with each layer's fan-in)
  random          per-layer shares drawn uniformly (each layer between its lowest share and 1), kept when the
                  network lands in the top tenth of the budget (90-100% of the multiply-adds allowed: EagleEye's
                  window, so no candidate wastes budget); as many candidates as the agent's episodes
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from groundwork.compression.structured import per_layer, unit_strengths
from groundwork.models.digitnet import DigitNet
from groundwork.search.agents import Agent, Step
from groundwork.search.env import PruningEnv

OnEpisode = Callable[[int, float, Sequence[float]], None]  # (episode, reward, shares kept)
Candidate = tuple[list[float], list[str]]  # each layer's share kept, each cell's precision (the layers, the head)
WINDOW = 0.9  # random search keeps candidates using at least this share of the budget
DRAWS_PER_CANDIDATE = 10000


@dataclass
class SearchResult:
    """Every candidate a method scored, in order, and the best of them (the first, on ties)."""

    method: str
    rewards: list[float] = field(default_factory=list)
    policies: list[list[float]] = field(default_factory=list)
    precisions: list[list[str]] = field(default_factory=list)
    widths: list[tuple[int, ...]] = field(default_factory=list)
    macs_kept: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)

    def add(self, env: PruningEnv, reward: float, keeps: Sequence[float], precisions: Sequence[str]) -> None:
        """Record a scored candidate (its shares and each cell's precision) with the layer widths its shares
        give, the multiply-adds they keep and their cost in the budget's units."""
        widths = per_layer(env.arch, keeps).layer_widths()
        self.rewards.append(reward)
        self.policies.append(list(keeps))
        self.precisions.append(list(precisions))
        self.widths.append(widths)
        self.macs_kept.append(env.arch.macs_kept([width / full for width, full in
                                                  zip(widths, env.arch.layer_widths(), strict=True)]))
        self.costs.append(env.network_cost(keeps, precisions))

    @property
    def best(self) -> int:
        """Index of the best-scoring candidate."""
        return int(np.argmax(self.rewards))

    @property
    def best_reward(self) -> float:
        return self.rewards[self.best]

    @property
    def best_policy(self) -> list[float]:
        return self.policies[self.best]

    @property
    def best_precisions(self) -> list[str]:
        return self.precisions[self.best]

    def best_so_far(self) -> list[float]:
        """The best reward after each candidate."""
        return list(np.maximum.accumulate(self.rewards))

    def best_widths_so_far(self) -> list[tuple[int, ...]]:
        """The widths of the best candidate after each candidate (the first of equals)."""
        best, found = 0, []
        for index, reward in enumerate(self.rewards):
            best = index if reward > self.rewards[best] else best
            found.append(self.widths[best])
        return found


def run_agent(env: PruningEnv, agent: Agent, method: str, *, episodes: int, warmup: int, seed: int,
              on_episode: OnEpisode | None = None) -> SearchResult:
    """Episodes of the agent in the environment: the first `warmup` play random search's candidates of this seed
    (`random_candidates`; every one within the wall: it meets the budget with each later layer at or above its
    lowest share), the rest the agent's; it learns from all of them."""
    explore = random_candidates(env, candidates=warmup, seed=seed)
    result = SearchResult(method)
    for episode in tqdm(range(episodes), desc=f"search {method}", unit="episode", mininterval=2.0, disable=None):
        explored = episode < warmup
        planned = env.actions(*explore[episode]) if explored else []
        state, _ = env.reset(seed=seed + episode)
        steps: list[Step] = []
        done = False
        while not done:
            low, high = env.allowed()
            proposed = planned[len(steps)] if explored else agent.act(state, low, high)
            next_state, reward, done, _, info = env.step(proposed)
            steps.append(Step(state, proposed, info["taken"], low, high))
            state = next_state
        agent.learn(steps, reward, explored=explored)
        result.add(env, reward, env.keeps, info["precisions"])
        if on_episode:
            on_episode(episode, reward, env.keeps)
    return result


def random_candidate(env: PruningEnv, rng: np.random.Generator) -> Candidate:
    """Shares drawn uniformly per layer, rounded down to the width grid (and, where a layer may take either, its
    precision drawn), until the network costs 90-100% of the budget; if that keeps failing (a budget near the
    lowest shares), a draw layer by layer among the options the wall allows."""
    lowest = np.asarray(env.lowest)
    choices = env.cost.precisions
    for _ in range(DRAWS_PER_CANDIDATE):
        keeps = env.aligned(list(rng.uniform(lowest, 1.0)))
        precisions = env.cells([layer[int(rng.integers(len(layer)))] if len(layer) > 1 else default
                                for layer, default in zip(choices[:-1], env.default_precisions, strict=False)])
        if WINDOW * env.budget <= env.network_cost(keeps, precisions) <= env.budget:
            return keeps, precisions
    return env.draw(rng)


def random_candidates(env: PruningEnv, *, candidates: int, seed: int) -> list[Candidate]:
    """The `candidates` random per-layer policies random search scores with this seed (see `random_candidate`):
    drawn before any is scored, so they can be scored anywhere, in any order."""
    rng = np.random.default_rng(seed)
    return [random_candidate(env, rng) for _ in range(candidates)]


def random_search(env: PruningEnv, *, candidates: int, seed: int,
                  on_episode: OnEpisode | None = None) -> SearchResult:
    """Score `candidates` random per-layer policies (`random_candidates`)."""
    result = SearchResult("random")
    for candidate, (keeps, precisions) in enumerate(tqdm(random_candidates(env, candidates=candidates, seed=seed),
                                                         desc="search random", unit="candidate", mininterval=2.0,
                                                         disable=None)):
        result.add(env, env.score(keeps, precisions), keeps, precisions)
        if on_episode:
            on_episode(candidate, result.rewards[-1], keeps)
    return result


def uniform(env: PruningEnv) -> SearchResult:
    """The largest single share (each layer at least at its lowest, rounded down to its width grid) that meets
    the budget: every share at which some layer's width changes is tried (latency need not fall with the share).
    When no single share does (a latency budget at the fastest network), that fastest network."""
    steps = sorted({width / full for choices, full in zip(env.cost.widths, env.full, strict=True)
                    for width in choices})
    fitting = [share for share in steps if env.network_cost(env.aligned([share] * env.layers)) <= env.budget]
    keeps, precisions = (env.aligned([max(fitting)] * env.layers), env.cells()) if fitting else env.cheapest()
    result = SearchResult("uniform")
    result.add(env, env.score(keeps, precisions), keeps, precisions)
    return result


def _relative(strengths: torch.Tensor) -> torch.Tensor:
    return strengths / strengths.mean()


def global_ranking(env: PruningEnv, model: DigitNet) -> SearchResult:
    """Remove channels across all layers, weakest |gamma| first (no layer below its lowest share), until the
    network, each layer rounded down to its width grid, meets the budget; the fastest network of the grid when
    removing never gets there (latency need not fall as channels go)."""
    widths = env.arch.layer_widths()
    counts = list(widths)
    floors = [math.ceil(width * low - 1e-9) for width, low in zip(widths, env.lowest, strict=True)]
    scales = [norm.weight.detach().abs() if norm is not None else _relative(unit_strengths(layer, None))
              for layer, norm in model.prunable()]
    order = sorted((float(scale), layer) for layer, values in enumerate(scales) for scale in values)

    def keeps() -> list[float]:
        return env.aligned([count / width for count, width in zip(counts, widths, strict=True)])

    for _, layer in order:
        if env.network_cost(keeps()) <= env.budget:
            break
        if counts[layer] > floors[layer]:
            counts[layer] -= 1
    chosen, precisions = (keeps(), env.cells()) if env.network_cost(keeps()) <= env.budget else env.cheapest()
    result = SearchResult("global_ranking")
    result.add(env, env.score(chosen, precisions), chosen, precisions)
    return result
