"""One search: the agent params name and the three baselines, each scoring candidates for the same model, budget
and validation split through one environment and one scorer, so their rewards are comparable (and a candidate
two methods both found is scored once)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from groundwork.compression.structured import narrower
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params
from groundwork.params.compression import SearchParams
from groundwork.search.agents import make_agent
from groundwork.search.cost import ChainCost, latency_cost, macs_cost, precision_choices, size_cost
from groundwork.search.env import FEATURES, PruningEnv, Score
from groundwork.search.latency import LatencyTable, shipped_precisions
from groundwork.search.methods import (
    Candidate,
    OnEpisode,
    SearchResult,
    global_ranking,
    random_candidates,
    random_search,
    run_agent,
    uniform,
)
from groundwork.training.loop import derived_seed

BASELINES = ("uniform", "global_ranking", "random")
MethodEpisode = Callable[[str, int, float, Sequence[float]], None]  # (method, episode, reward, shares kept)
Prescore = Callable[[Sequence[Candidate]], None]  # scores candidates ahead, into the scorer's memory


@dataclass(frozen=True)
class Budget:
    """What the search spends: `cost`, at most `limit` of it; `asked` is what the params asked for, which is less
    than `limit` only when no network of the grid costs that little (`limit` is then the cheapest one's cost)."""

    cost: ChainCost
    limit: float
    asked: float

    def describe(self) -> str:
        """The budget in words, for logs, plots and the summary."""
        floor = "" if self.limit == self.asked else \
            f", the cheapest reachable (asked {self.cost.describe(self.asked)})"
        return f"{self.cost.describe(self.limit)}{floor}"


def search_budget(params: Params, table: LatencyTable | None) -> Budget:
    """The budget `search.budget_of` names over the grid of `search.min_keep` and `search.width_multiple` (each
    layer in int8, the ends as compress ships them, or either precision with `search.precision: mixed`): a share
    of the multiply-adds; or a share of structured_int8's latency at evaluate's throughput batch (each network
    estimated by the latency table) or of its bytes of weights. Where the share asks for less than the cheapest
    network of the grid costs, that network's cost is the limit."""
    cfg, arch = params.search, params.model
    grid = arch.width_grid(cfg.min_keep, cfg.width_multiple)
    choices = precision_choices(len(grid) + 1, params.compress.quantization, cfg.precision == "mixed")
    if cfg.budget_of == "macs":
        return Budget(macs_cost(arch, grid, choices), cfg.macs_kept, cfg.macs_kept)
    shipped = shipped_precisions(len(grid) + 1, params.compress.quantization)
    structured = narrower(arch, params.compress.channels_kept).layer_widths()
    structured_int8 = list(zip(structured, shipped, strict=False))
    if cfg.budget_of == "size":
        cost = size_cost(arch, grid, choices)
        asked = cfg.size_kept * cost.total(structured_int8)
        return Budget(cost, max(asked, cost.cheapest()), asked)
    if table is None:
        raise ValueError("a latency budget needs the latency table")
    batch = params.evaluate.throughput_batch
    cost = latency_cost(table, grid, choices, batch)
    # on the grid, structured_int8 is priced by the same estimate as the candidates, so the share compares like
    # with like (the table's error cancels); off it, its end-to-end time stands in
    on_grid = all(width in widths for width, widths in zip(structured, grid, strict=True))
    asked = cfg.latency_kept * (cost.total(structured_int8) if on_grid else table.reference(batch))
    return Budget(cost, max(asked, cost.cheapest()), asked)


def compare_methods(model: DigitNet, cfg: SearchParams, *, score: Score, cost: ChainCost, budget: float,
                    seed: int, on_episode: MethodEpisode | None = None,
                    prescore: Prescore | None = None) -> dict[str, SearchResult]:
    """Every method's candidates under `budget` of `cost`, scored by `score` (groundwork.search.scoring's
    `make_scorer`), keyed `agent` (the params' agent) and by baseline name. The agent and random search score
    `cfg.episodes` candidates each; `on_episode(method, episode, reward, keeps)`. `prescore` (groundwork.search
    .fanout) is given random search's candidates and the agent's warm-up ones first: they do not depend on any
    score, so they can be scored at once in other processes, and both methods then find their scores remembered."""
    env = PruningEnv(model.arch, score, budget=budget, cost=cost)
    random_seed, episodes_seed = (derived_seed(seed, "search", name) for name in ("random", "episodes"))
    if prescore is not None:
        prescore([*random_candidates(env, candidates=cfg.episodes, seed=random_seed),
                  *random_candidates(env, candidates=cfg.warmup_episodes, seed=episodes_seed)])

    def report(method: str) -> OnEpisode | None:
        if on_episode is None:
            return None
        return lambda episode, reward, keeps: on_episode(method, episode, reward, keeps)

    agent = make_agent(cfg.agent, len(FEATURES), seed=derived_seed(seed, "search", cfg.agent))
    return {
        "uniform": uniform(env),
        "global_ranking": global_ranking(env, model),
        "random": random_search(env, candidates=cfg.episodes, seed=random_seed,
                                on_episode=report("random")),
        "agent": run_agent(env, agent, cfg.agent, episodes=cfg.episodes, warmup=cfg.warmup_episodes,
                           seed=episodes_seed, on_episode=report("agent")),
    }
