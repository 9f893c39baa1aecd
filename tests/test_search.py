"""search: the pruning environment and its action wall, the budget arithmetic against a counted network, adaptive
BatchNorm scoring, the two agents (they learn, deterministically, and stop on a diverging critic), the baselines,
and the stage's outputs."""

from __future__ import annotations

import itertools
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from groundwork.compression.export import export_onnx, fp32_cells, quantize_int8
from groundwork.compression.structured import narrower, per_layer, prune_channels
from groundwork.data.datasets import load_dataset
from groundwork.errors import DataError, TrainingDiverged
from groundwork.models.checkpoint import load_model
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params, ParamsError, parse_params
from groundwork.params.training import ModelParams
from groundwork.project import tiny_params_dict
from groundwork.search import scoring
from groundwork.search.agents import DDPG, Reinforce
from groundwork.search.compare import search_budget
from groundwork.search.cost import ChainCost, Option
from groundwork.search.env import FEATURES, PruningEnv
from groundwork.search.latency import read_latency_table, shipped_precisions
from groundwork.search.methods import global_ranking, random_search, run_agent, uniform
from groundwork.search.policy import read_policy, read_precisions
from groundwork.search.scoring import AdaptiveBNScorer, DistilledScorer, make_scorer, recalibrate_batchnorm
from groundwork.training.loop import prepare_batch

CPU = torch.device("cpu")
ARCH = ModelParams.from_saved({"channels": (32, 64), "embedding_dim": 128, "dropout": 0.0})
MLP = ARCH.model_copy(update={"arch": "mlp", "hidden": (300, 100)})  # LeNet-300-100
LENET5 = ARCH.model_copy(update={"arch": "lenet5", "channels": (20, 50), "embedding_dim": 500})


def counted_macs(model: nn.Module) -> list[int]:
    """Multiply-adds of every conv and linear layer for one 28x28 image, counted from the shapes a forward
    pass produces (not from the formula under test)."""
    counts: list[int] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        per_output = module.weight[0].numel()  # in_channels * kernel area (or in_features)
        counts.append(per_output * output[0].numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, 28, 28))
    for handle in handles:
        handle.remove()
    return counts[:-1]  # the head is not prunable


def test_budget_arithmetic_matches_the_multiply_adds_of_the_pruned_network() -> None:
    full = DigitNet(ARCH)
    assert list(ARCH.layer_macs()) == counted_macs(full)
    widths = (8, 24, 16, 40, 50)
    narrow = ARCH.with_widths(widths)
    assert narrow.layer_widths() == widths and narrow.inner_channels == (8, 16)
    keeps = [w / f for w, f in zip(widths, ARCH.layer_widths(), strict=True)]
    assert ARCH.macs_kept(keeps) == pytest.approx(sum(counted_macs(DigitNet(narrow))) / sum(counted_macs(full)))


@pytest.mark.parametrize(("arch", "narrow_widths"), [(MLP, (150, 40)), (LENET5, (10, 20, 100))])
def test_every_architecture_counts_its_multiply_adds_and_prunes_through_its_own_layer_description(
        arch: ModelParams, narrow_widths: tuple[int, ...]) -> None:
    """The MLP and LeNet-5 (no BatchNorm): the formula matches the shapes a forward pass produces, and a pruned
    copy whose removed units were dead computes the same logits."""
    torch.manual_seed(0)
    model = DigitNet(arch).eval()
    assert list(arch.layer_macs()) == counted_macs(model)
    narrow = arch.with_widths(narrow_widths)
    assert narrow.layer_widths() == narrow_widths and narrow.arch == arch.arch
    with torch.no_grad():  # kill the units pruning must remove: the weakest filters, giving no output
        for (layer, _), width in zip(model.prunable(), narrow_widths, strict=True):
            dead = torch.randperm(layer.weight.shape[0])[width:]
            layer.weight[dead] = 0
            layer.bias[dead] = -1.0  # ReLU then gives 0 whatever the input
    images = torch.rand(6, 1, 28, 28)
    pruned = prune_channels(model, narrow)
    assert pruned.arch == narrow
    torch.testing.assert_close(pruned(images), model(images), atol=1e-5, rtol=1e-5)
    env = PruningEnv(arch, lambda keeps, precisions: 0.0, budget=0.3, min_keep=0.1)
    assert global_ranking(env, model).macs_kept[0] <= 0.3


@settings(max_examples=60, deadline=None)
@given(actions=st.lists(st.floats(0.0, 1.0), min_size=5, max_size=5), budget=st.floats(0.08, 0.9),
       multiple=st.sampled_from([1, 8, 16]))
def test_the_action_wall_keeps_every_episode_within_budget_on_the_width_grid(actions: list[float], budget: float,
                                                                             multiple: int) -> None:
    env = PruningEnv(ARCH, lambda keeps, precisions: 0.0, budget=budget, min_keep=0.1, width_multiple=multiple)
    if ARCH.macs_kept(env.lowest) > budget:  # params refuse such a budget (test below)
        return
    observation, info = env.reset(seed=0)
    assert info == {} and observation.shape == (len(FEATURES),) and observation.dtype == np.float32
    for layer, action in enumerate(actions):
        high = env.allowed()[1]
        observation, _, terminated, truncated, info = env.step(action)
        assert info["keep"] <= high and info["keep"] >= env.lowest[layer]
        assert terminated == (layer == len(actions) - 1) and not truncated
        assert observation in env.observation_space
    assert info["macs_kept"] <= budget + 1e-9
    widths = per_layer(ARCH, info["keeps"]).layer_widths()  # the shares are the grid's widths exactly
    assert [w / f for w, f in zip(widths, ARCH.layer_widths(), strict=True)] == pytest.approx(info["keeps"])
    assert all(width % multiple == 0 or width == full for width, full in zip(widths, ARCH.layer_widths(),
                                                                            strict=True)), widths


def test_the_environment_passes_gymnasiums_own_checks() -> None:
    from gymnasium.utils.env_checker import check_env

    env = PruningEnv(ARCH, lambda keeps, precisions: float(sum(keeps)), budget=0.3, min_keep=0.1, width_multiple=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    assert [str(warning.message) for warning in caught] == []


def test_baselines_keep_to_the_width_grid() -> None:
    env = PruningEnv(ARCH, lambda keeps, precisions: float(keeps[0]), budget=0.3, min_keep=0.1, width_multiple=8)
    found = [uniform(env), global_ranking(env, DigitNet(ARCH)), random_search(env, candidates=10, seed=1)]
    for result in found:
        for widths, macs in zip(result.widths, result.macs_kept, strict=True):
            assert all(width % 8 == 0 for width in widths) and macs <= 0.3, (result.method, widths)
    assert all(macs >= 0.27 for macs in found[2].macs_kept), "random search keeps to its window on the grid"


def test_ddpg_replays_a_bounded_buffer_of_raw_rewards() -> None:
    env = PruningEnv(ARCH, first_layer_reward, budget=0.3, min_keep=0.1)
    agent = DDPG(len(FEATURES), seed=0, replay_size=12)
    run_agent(env, agent, "ddpg", episodes=6, warmup=4, seed=0)
    assert len(agent.replay) == 12, "the oldest steps dropped"
    rewards = [transition.reward for transition in agent.replay]
    assert set(rewards) <= set(run_agent(PruningEnv(ARCH, first_layer_reward, budget=0.3, min_keep=0.1),
                                         DDPG(len(FEATURES), seed=0, replay_size=12), "ddpg", episodes=6,
                                         warmup=4, seed=0).rewards), "stored as scored, no baseline taken off"
    assert agent.baseline.value is not None and agent.baseline.value > 0, "the baseline moves with the batches"


def test_baselines_meet_the_budget_and_random_search_scores_its_candidates() -> None:
    scored: list[list[float]] = []

    def score(keeps: Any, precisions: Any) -> float:
        scored.append(list(keeps))
        return float(keeps[0])

    env = PruningEnv(ARCH, score, budget=0.3, min_keep=0.1)
    keeps = uniform(env).best_policy
    wider = [keep + 1 / width for keep, width in zip(keeps, ARCH.layer_widths(), strict=True)]  # a channel more
    assert ARCH.macs_kept(keeps) <= 0.3 < ARCH.macs_kept(wider), "the largest single share"
    assert max(keeps) - min(keeps) < 1 / 32, "one share, each layer rounded down to whole channels"
    ranked = global_ranking(env, DigitNet(ARCH))
    assert ranked.macs_kept[0] <= 0.3
    found = random_search(env, candidates=20, seed=3)
    assert len(found.rewards) == 20 and all(0.27 <= ARCH.macs_kept(keeps) <= 0.3 for keeps in found.policies)
    assert all(m <= 0.3 for m in found.macs_kept), "the widths (rounded down) spend no more than the shares"
    assert found.best_reward == max(found.rewards) and len(scored) == 22
    assert found.best_widths_so_far()[-1] == found.widths[found.best]
    assert found.best_widths_so_far()[0] == found.widths[0]
    assert random_search(env, candidates=20, seed=3).policies == found.policies, "seeded"


def first_layer_reward(keeps: Any, precisions: Any) -> float:
    """A known optimum: the budget spent on the first layer (the others at their lowest) scores best."""
    return float(keeps[0])


@pytest.mark.parametrize("agent_class", [DDPG, Reinforce])
def test_agents_learn_where_the_reward_is_and_repeat_themselves(agent_class: type) -> None:
    def search() -> list[float]:
        env = PruningEnv(ARCH, first_layer_reward, budget=0.3, min_keep=0.1)
        agent = agent_class(len(FEATURES), seed=5)
        return run_agent(env, agent, "agent", episodes=80, warmup=15, seed=5).rewards

    rewards = search()
    assert search() == rewards, "seeded: the same episodes on the CPU"
    random_part, learnt_tail = np.mean(rewards[:15]), np.mean(rewards[-15:])
    assert learnt_tail > random_part + 0.15, (random_part, learnt_tail)


def test_a_diverging_critic_stops_the_search_with_a_clear_error() -> None:
    env = PruningEnv(ARCH, lambda keeps, precisions: float("nan"), budget=0.3, min_keep=0.1)
    with pytest.raises(TrainingDiverged, match="critic's loss became nan"):
        run_agent(env, DDPG(len(FEATURES), seed=0), "ddpg", episodes=4, warmup=2, seed=0)


def test_recalibration_replaces_batchnorm_statistics_with_the_images_own(tiny_transferred: dict[str, Any],
                                                                         tiny_data: dict[str, Path]) -> None:
    model, _ = load_model(tiny_transferred["model"])
    pruned = prune_channels(model, per_layer(model.arch, [0.5] * len(model.arch.layer_widths())))
    images = load_dataset(tiny_data["target"], splits=("pool",))[0]["pool"].tensors()[0][:40]
    recalibrate_batchnorm(pruned, images, device=CPU)
    conv, norm = pruned.backbone.features[0][0], pruned.backbone.features[0][1]
    with torch.no_grad():  # what the first conv sees: pixels normalised as the backbone does it
        activations = conv((prepare_batch(images, CPU) - model.arch.pixel_mean) / model.arch.pixel_std)
    torch.testing.assert_close(norm.running_mean, activations.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)
    assert not pruned.training


def test_scorer_scores_a_candidate_once_and_full_width_keeps_the_accuracy(tiny_transferred: dict[str, Any],
                                                                          tiny_data: dict[str, Path]) -> None:
    data, _ = load_dataset(tiny_data["target"], splits=("val", "pool"))
    model, _ = load_model(tiny_transferred["model"])
    scorer = AdaptiveBNScorer(model, data["pool"].tensors()[0], data["val"].tensors(), device=CPU)
    layers = len(model.arch.layer_widths())
    int8, fp32 = ["int8"] * (layers + 1), ["fp32"] * (layers + 1)
    half = scorer([0.5] * layers, int8)
    assert scorer([0.5 + 1e-4] * layers, int8) == half and len(scorer._scores) == 1, "same widths, one scoring"
    assert scorer([0.5] * layers, fp32) == half and len(scorer._scores) == 1, "adaptive BN scores in fp32 alone"
    images = len(data["val"].labels)  # a score is the share of the validation images classified right
    assert half * images == pytest.approx(round(half * images)) and scorer([1.0] * layers, int8) >= half - 0.05


def test_the_distilled_reward_fine_tunes_and_scores_in_int8_the_same_each_time(
        tiny_params: Params, tiny_transferred: dict[str, Any], tiny_data: dict[str, Path]) -> None:
    data, _ = load_dataset(tiny_data["target"], splits=("train", "val", "pool"))
    model, _ = load_model(tiny_transferred["model"])
    distilled = tiny_params.model_copy(update={"search": tiny_params.search.model_copy(update={"reward":
                                                                                           "distilled"})})
    scorer = make_scorer(distilled, model, data, device=CPU)
    assert isinstance(scorer, DistilledScorer)
    keeps = [0.5] * len(model.arch.layer_widths())
    shipped = shipped_precisions(len(keeps) + 1, tiny_params.compress.quantization)
    quick = make_scorer(tiny_params.model_copy(update={"search": distilled.search.model_copy(
        update={"reward": "adaptive_bn"})}), model, data, device=CPU)
    assert type(quick) is AdaptiveBNScorer
    recalibrated = quick.recalibrated(keeps)
    score = scorer(keeps, shipped)
    images = len(data["val"].labels)
    assert score * images == pytest.approx(round(score * images)), "a share of the validation images"
    # a fresh scorer (another method, another run) gives the candidate the same score: it is seeded by the widths
    assert make_scorer(distilled, model, data, device=CPU)(keeps, shipped) == score
    # what it scores: the short fine-tune's weights (not the recalibrated ones), quantized as compress does, each
    # layer in its precision: the same widths with a middle layer in fp32 are another candidate
    scorer._scores.clear()
    tuned: list[nn.Module] = []
    quantized: list[Any] = []
    export, quantize = scoring.export_onnx, scoring.quantize_int8

    def keep_the_exported(module: nn.Module, path: Path) -> None:
        tuned.append(module)
        export(module, path)

    def keep_the_quantization(fp32: Path, int8: Path, calibration: Any, quantization: Any,
                              fp32_layers: Any) -> None:
        quantized.append((quantization, fp32_layers))
        quantize(fp32, int8, calibration, quantization, fp32_layers=fp32_layers)

    mixed = [*shipped[:1], "fp32", *shipped[2:]]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scoring, "export_onnx", keep_the_exported)
        patch.setattr(scoring, "quantize_int8", keep_the_quantization)
        assert scorer(keeps, shipped) == score
        scorer(keeps, mixed)
    ends = [0, len(shipped) - 1] if tiny_params.compress.quantization.keep_ends_fp32 else []
    assert quantized == [(tiny_params.compress.quantization, ends),
                         (tiny_params.compress.quantization, sorted({*ends, 1}))]
    assert len(scorer._scores) == 2
    first = tuned[0].backbone.features[0][0].weight
    assert first.shape == recalibrated.backbone.features[0][0].weight.shape
    assert not torch.allclose(first, recalibrated.backbone.features[0][0].weight)


def test_the_stage_writes_the_agents_policy_within_budget(tiny_params: Params, tiny_searched: dict[str, Any]) -> None:
    metrics, cfg = tiny_searched["metrics"], tiny_params.search
    policy = json.loads(tiny_searched["policy"].read_text())
    agent = metrics["methods"]["agent"]
    assert policy["widths"] == agent["widths"] and policy["agent"] == cfg.agent
    assert agent["macs_kept"] <= cfg.macs_kept + 1e-9 and agent["candidates"] == cfg.episodes
    assert metrics["methods"]["random"]["candidates"] == cfg.episodes
    assert set(metrics["methods"]) == {"agent", "uniform", "global_ranking", "random"}
    table = pd.read_csv(tiny_searched["table"])
    assert len(table) == cfg.episodes and table["agent_best"].is_monotonic_increasing
    assert table["agent_best"].iloc[-1] == pytest.approx(agent["best_reward"])
    assert metrics["agent_minus_uniform_points"] == pytest.approx(
        (agent["best_reward"] - metrics["methods"]["uniform"]["best_reward"]) * 100, abs=0.01)
    assert tiny_searched["plot"].stat().st_size > 10_000


def test_a_rerun_gives_the_same_policy_and_an_interrupted_one_leaves_the_last(
        tmp_path: Path, tiny_params: Params, tiny_data: dict[str, Path], tiny_transferred: dict[str, Any],
        tiny_searched: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks import search

    paths = {"policy_out": tmp_path / "policy.json", "table_out": tmp_path / "t.csv", "plot_out": tmp_path / "p.png"}
    search.run(tiny_params, transferred=tiny_transferred["model"], target=tiny_data["target"],
               latency=tiny_searched["latency"], **paths)
    assert paths["policy_out"].read_bytes() == tiny_searched["policy"].read_bytes()
    before = {name: path.read_bytes() for name, path in paths.items()}
    calls = {"n": 0}
    score = AdaptiveBNScorer.__call__

    def dies_mid_search(self: AdaptiveBNScorer, keeps: Any, precisions: Any) -> float:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # what a kill looks like from inside: the search never reaches its writes
        return score(self, keeps, precisions)

    monkeypatch.setattr(AdaptiveBNScorer, "__call__", dies_mid_search)
    with pytest.raises(KeyboardInterrupt):
        search.run(tiny_params.model_copy(update={"seed": 7}), transferred=tiny_transferred["model"],
                   target=tiny_data["target"], latency=tiny_searched["latency"], **paths)
    assert {name: path.read_bytes() for name, path in paths.items()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values()), "no temporaries"


def test_an_unreachable_budget_is_a_params_error_naming_the_key() -> None:
    with pytest.raises(ParamsError, match=r"search\.macs_kept=0\.01 is below"):
        parse_params(tiny_params_dict(search={"macs_kept": 0.01}))
    with pytest.raises(ParamsError, match=r"search\.macs_kept=0\.1 is below 0\.1\d+.*search\.width_multiple=4"):
        parse_params(tiny_params_dict(search={"macs_kept": 0.1}))  # the message says what sets the narrowest
    with pytest.raises(ParamsError, match=r"search\.width_multiple=8 leaves no narrower width to search in a "
                                          r"layer of 8"):
        parse_params(tiny_params_dict(search={"width_multiple": 8}))
    with pytest.raises(ParamsError, match=r"warmup_episodes \(6\) must be below episodes \(6\)"):
        parse_params(tiny_params_dict(search={"warmup_episodes": 6}))


def test_a_policy_for_another_architecture_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"widths": [8, 8, 16, 16]}))
    with pytest.raises(DataError, match=rf"{path}: widths \[8, 8, 16, 16\] do not fit"):
        read_policy(path, ARCH)
    path.write_text("{not json")
    with pytest.raises(DataError, match=rf"{path}: not a search policy"):
        read_policy(path, ARCH)
    with pytest.raises(DataError, match="no search policy"):
        read_policy(tmp_path / "missing.json", ARCH)
    path.write_text(json.dumps({"widths": [8, 24, 16, 40, 50]}))
    assert read_policy(path, ARCH).layer_widths() == (8, 24, 16, 40, 50)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), fraction=st.floats(0.0, 1.0))
def test_a_chain_cost_finds_the_cheapest_network_and_what_fits_as_brute_force_does(seed: int,
                                                                                   fraction: float) -> None:
    """On a random cost that is not monotone in the widths (as latency is in int8), the dynamic programme's
    cheapest network and each layer's fitting widths are those an exhaustive search finds."""
    rng = np.random.default_rng(seed)
    grid = [[(8, "int8"), (16, "int8"), (24, "int8")],
            [(width, precision) for width in (8, 16) for precision in ("int8", "fp32")],  # a mixed-precision layer
            [(16, "fp32"), (32, "fp32"), (48, "fp32")]]
    terms: dict[tuple[Any, ...], float] = {}

    def term(cell: int, before: Option, option: Option) -> float:
        return terms.setdefault((cell, before, option), float(rng.uniform(0, 1)))

    cost = ChainCost(grid, term, head=(10, "fp32"), constant=0.5)
    networks = list(itertools.product(*grid))
    totals = {options: cost.total(options) for options in networks}
    assert cost.cheapest() == pytest.approx(min(totals.values())) == pytest.approx(
        cost.total(cost.cheapest_options()))
    assert cost.widths == [(8, 16, 24), (8, 16), (16, 32, 48)]
    assert cost.precisions == [("int8",), ("fp32", "int8"), ("fp32",), ("fp32",)]
    budget = min(totals.values()) + fraction * (max(totals.values()) - min(totals.values()))
    for decided in [(), ((16, "int8"),), ((24, "int8"), (8, "fp32"))]:
        fits = {options[len(decided)] for options in networks if options[:len(decided)] == decided
                and totals[options] <= budget}
        assert set(cost.within(list(decided), budget)) == fits


def test_under_a_latency_budget_every_episode_fits_and_the_fastest_network_bounds_the_budget(
        tiny_params: Params, tiny_latency: dict[str, Any]) -> None:
    table = read_latency_table(tiny_latency["table"])
    params = tiny_params.model_copy(update={"search": tiny_params.search.model_copy(
        update={"budget_of": "latency", "latency_kept": 0.01})})
    budget = search_budget(params, table)
    structured = narrower(params.model, params.compress.channels_kept).layer_widths()  # on the tiny grid
    shipped = shipped_precisions(len(structured) + 1, params.compress.quantization)
    assert budget.asked == pytest.approx(0.01 * budget.cost.total(list(zip(structured, shipped, strict=False)))), \
        "priced as the candidates are"
    off_grid = params.model_copy(update={"compress": params.compress.model_copy(update={"channels_kept": 0.6})})
    assert search_budget(off_grid, table).asked == pytest.approx(0.01 * table.reference(32)), "measured instead"
    assert budget.limit == pytest.approx(budget.cost.cheapest()), "the fastest reachable instead"
    assert budget.limit > budget.asked
    assert "the cheapest reachable" in budget.describe()
    generous = search_budget(params.model_copy(update={"search": params.search.model_copy(
        update={"latency_kept": 1.5})}), table)
    assert generous.limit == generous.asked
    env = PruningEnv(params.model, lambda keeps, precisions: 0.0, budget=generous.limit, cost=generous.cost)
    rng = np.random.default_rng(0)
    for _ in range(30):
        env.reset()
        for _ in range(env.layers):
            info = env.step(rng.random())[-1]
        assert info["cost"] <= generous.limit + 1e-9
        assert info["cost"] == pytest.approx(table.network_ms(env.widths(info["keeps"]), shipped_precisions(
            env.layers + 1, params.compress.quantization), params.evaluate.throughput_batch))


def test_the_stage_searches_within_the_fastest_network_when_a_latency_share_asks_for_less(
        tmp_path: Path, tiny_params: Params, tiny_data: dict[str, Path], tiny_transferred: dict[str, Any],
        tiny_latency: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    from tasks import search

    params = tiny_params.model_copy(update={"search": tiny_params.search.model_copy(
        update={"budget_of": "latency", "latency_kept": 0.01})})
    paths = {"policy_out": tmp_path / "policy.json", "table_out": tmp_path / "t.csv", "plot_out": tmp_path / "p.png"}
    with caplog.at_level(logging.WARNING):
        metrics = search.run(params, transferred=tiny_transferred["model"], target=tiny_data["target"],
                             latency=tiny_latency["table"], **paths)
    assert metrics["budget_of"] == "latency" and metrics["budget_limit"] > metrics["budget_asked"]
    assert "search.latency_kept=0.01 asks for" in caplog.text and "searching at that one instead" in caplog.text
    assert all(method["cost"] <= metrics["budget_limit"] + 1e-9 for method in metrics["methods"].values())
    assert "ms per call at batch 32, the cheapest reachable" in json.loads(paths["policy_out"].read_text())["budget"]


def test_mixed_precision_adds_a_precision_step_per_open_layer_and_every_episode_fits_the_table(
        tiny_params: Params, tiny_latency: dict[str, Any]) -> None:
    from gymnasium.utils.env_checker import check_env

    table = read_latency_table(tiny_latency["table"])
    params = tiny_params.model_copy(update={"search": tiny_params.search.model_copy(
        update={"budget_of": "latency", "latency_kept": 1.2, "precision": "mixed", "reward": "distilled"})})
    budget = search_budget(params, table)
    quantization = params.compress.quantization
    cells = len(params.model.layer_widths()) + 1
    assert quantization.keep_ends_fp32, "the tiny preset keeps the ends fp32, as the default does"
    assert budget.cost.precisions[0] == budget.cost.precisions[-1] == ("fp32",), "the ends stay fp32"
    assert all(choices == ("fp32", "int8") for choices in budget.cost.precisions[1:-1]), "the middle layers open"
    env = PruningEnv(params.model, lambda keeps, precisions: float(sum(keeps)), budget=budget.limit,
                     cost=budget.cost)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    assert [str(warning.message) for warning in caught] == []
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    for _ in range(40):
        env.reset()
        steps, done, info = 0, False, {}
        while not done:
            low, high = env.allowed()
            _, _, done, _, info = env.step(rng.uniform(low, high))
            steps += 1
        assert steps == env.layers + sum(env.has_precision_step)
        assert len(info["precisions"]) == cells and info["cost"] <= budget.limit + 1e-9
        assert info["cost"] == pytest.approx(table.network_ms(env.widths(info["keeps"]), info["precisions"],
                                                              params.evaluate.throughput_batch))
        seen.update(info["precisions"][1:-1])
    assert seen == {"int8", "fp32"}, "both precisions drawn for the open layers"
    # the warm-up's plan replays a random candidate exactly, precisions included
    keeps, precisions = random_search(env, candidates=1, seed=3).policies[0], random_search(
        env, candidates=1, seed=3).precisions[0]
    env.reset()
    for action in env.actions(keeps, precisions):
        info = env.step(action)[-1]
    assert info["keeps"] == keeps and info["precisions"] == precisions


def test_mixed_precision_needs_the_distilled_reward_and_a_policy_names_each_cells_precision(
        tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"search.*precision 'mixed' needs reward 'distilled'"):
        parse_params(tiny_params_dict(search={"precision": "mixed", "reward": "adaptive_bn"}))
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"widths": [8, 24, 16, 40, 50], "precisions": ["fp32", "int8", "int8", "fp32"]}))
    with pytest.raises(DataError, match=r"policy\.json: precisions .* each of the 6 weighted layers"):
        read_precisions(path, 6)
    path.write_text(json.dumps({"widths": [8], "precisions": ["fp32", "int4", "int8", "int8", "int8", "fp32"]}))
    with pytest.raises(DataError, match="int4"):
        read_precisions(path, 6)
    mixed = ["fp32", "int8", "fp32", "int8", "int8", "fp32"]
    path.write_text(json.dumps({"widths": [8], "precisions": mixed}))
    assert read_precisions(path, 6) == mixed and fp32_cells(mixed) == [0, 2, 5]


def test_a_mixed_precision_search_writes_each_cells_precision_for_compress(
        tmp_path: Path, tiny_params: Params, tiny_data: dict[str, Path], tiny_transferred: dict[str, Any],
        tiny_latency: dict[str, Any]) -> None:
    from tasks import search

    params = tiny_params.model_copy(update={"search": tiny_params.search.model_copy(
        update={"budget_of": "latency", "latency_kept": 1.2, "precision": "mixed", "reward": "distilled"})})
    paths = {"policy_out": tmp_path / "policy.json", "table_out": tmp_path / "t.csv", "plot_out": tmp_path / "p.png"}
    metrics = search.run(params, transferred=tiny_transferred["model"], target=tiny_data["target"],
                         latency=tiny_latency["table"], **paths)
    agent = metrics["methods"]["agent"]
    cells = len(params.model.layer_widths()) + 1
    assert read_precisions(paths["policy_out"], cells) == agent["precisions"]
    table = read_latency_table(tiny_latency["table"])
    assert agent["int8_latency_ms"]["b32"] == pytest.approx(
        table.network_ms(agent["widths"], agent["precisions"], 32), abs=1e-4), "estimated in its own precisions"
    assert {len(method["precisions"]) for method in metrics["methods"].values()} == {cells}


def test_the_size_budget_counts_the_bytes_an_int8_file_grows_by(tmp_path: Path, tiny_params: Params) -> None:
    """The size cost is the weights' bytes (one per int8 weight, four per fp32 one, biases, int8 scales): it ranks
    networks as their quantized files' sizes do, and the file adds only its graph (a few kilobytes whatever the
    widths)."""
    params = parse_params(tiny_params_dict(model={"channels": [32, 64], "embedding_dim": 128},
                                           search={"budget_of": "size", "size_kept": 0.5}))
    quantization = params.compress.quantization
    grid = params.model.width_grid(params.search.min_keep, params.search.width_multiple)
    budget = search_budget(params, None)  # a size budget reads no latency table
    shipped = shipped_precisions(len(grid) + 1, quantization)
    structured = narrower(params.model, params.compress.channels_kept).layer_widths()
    assert budget.asked == pytest.approx(0.5 * budget.cost.total(list(zip(structured, shipped, strict=False))))
    assert budget.limit == budget.asked and budget.describe().endswith("bytes of weights")
    calibration = np.random.default_rng(0).random((32, 1, 28, 28), dtype=np.float32)
    networks = [((8, 8, 16, 16, 16), shipped), ((16, 16, 32, 32, 64), shipped),
                ((16, 16, 32, 32, 64), [*shipped[:2], "fp32", *shipped[3:]]), ((32, 32, 64, 64, 128), shipped)]
    estimates, files = [], []
    for index, (widths, precisions) in enumerate(networks):
        fp32, int8 = tmp_path / f"{index}.onnx", tmp_path / f"{index}_int8.onnx"
        export_onnx(DigitNet(params.model.with_widths(widths)), fp32)
        quantize_int8(fp32, int8, calibration, quantization, fp32_layers=fp32_cells(precisions))
        estimates.append(budget.cost.total(list(zip(widths, precisions, strict=False))))
        files.append(int8.stat().st_size)
    assert np.argsort(estimates).tolist() == np.argsort(files).tolist()
    assert all(0 < file - estimate < 20_000 for file, estimate in zip(files, estimates, strict=True)), \
        list(zip(files, estimates, strict=True))


def _random_candidates(params: Params, model: DigitNet) -> list[Any]:
    """Five of random search's candidates for `model`, the first drawn again (scored once)."""
    from groundwork.search.methods import random_candidates

    budget = search_budget(params, None)
    env = PruningEnv(model.arch, lambda keeps, precisions: 0.0, budget=budget.limit, cost=budget.cost)
    drawn = random_candidates(env, candidates=5, seed=1)
    return [*drawn, drawn[0]]


def _random_candidates_scored_here(params: Params, transferred: Path, target: Path
                                   ) -> tuple[DigitNet, Any, list[Any], list[float]]:
    """The transferred model, the search's splits, `_random_candidates` and their distilled rewards computed in
    this process on one thread."""
    from groundwork.search.fanout import SEARCH_SPLITS

    assert params.search.reward == "distilled"
    model, _ = load_model(transferred)
    data, _ = load_dataset(target, splits=SEARCH_SPLITS)
    candidates = _random_candidates(params, model)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = make_scorer(params, model, data, device=torch.device("cpu"))
        return model, data, candidates, [here(keeps, precisions) for keeps, precisions in candidates]
    finally:
        torch.set_num_threads(before)


@pytest.mark.subprocess
def test_random_searchs_candidates_scored_in_two_workers_score_as_in_this_process(
        tiny_params: Params, tiny_data: dict[str, Path], tiny_transferred: dict[str, Any]) -> None:
    """With the distilled reward, random search's candidates go to two worker processes (one thread each) ahead of
    the search; the stage's scorer then holds every distinct candidate's reward, equal to what it computes itself
    on one thread, and scores none of them again."""
    from groundwork.search.fanout import prescorer

    paths = {"transferred": tiny_transferred["model"], "target": tiny_data["target"]}
    model, data, candidates, expected = _random_candidates_scored_here(tiny_params, **paths)
    scorer = make_scorer(tiny_params, model, data, device=torch.device("cpu"))
    assert prescorer(tiny_params, scorer, workers=1, **paths) is None, "one worker and no scheduler: scored here"
    fast = tiny_params.model_copy(update={"search": tiny_params.search.model_copy(update={"reward": "adaptive_bn"})})
    assert prescorer(fast, scorer, workers=2, **paths) is None, "adaptive_bn: cheaper than starting workers"
    prescore = prescorer(tiny_params, scorer, workers=2, **paths)
    assert prescore is not None
    prescore(candidates)
    assert scorer.unscored(candidates) == [], "every distinct candidate remembered"
    assert [scorer(keeps, precisions) for keeps, precisions in candidates] == expected


@pytest.mark.server
def test_random_candidates_sent_to_a_dask_scheduler_score_as_in_this_process(
        tiny_params: Params, tiny_data: dict[str, Path], tiny_transferred: dict[str, Any], dask_scheduler: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """With a scheduler set (`dask scheduler` and two one-thread `dask worker` processes on localhost), the
    candidates go there even at `search.workers: 1`, and score as they do here on one thread."""
    import dask

    from groundwork.search.fanout import prescorer

    paths = {"transferred": tiny_transferred["model"], "target": tiny_data["target"]}
    model, data, candidates, expected = _random_candidates_scored_here(tiny_params, **paths)
    scorer = make_scorer(tiny_params, model, data, device=torch.device("cpu"))
    with dask.config.set({"scheduler-address": dask_scheduler}), caplog.at_level(logging.INFO):
        prescore = prescorer(tiny_params, scorer, workers=1, **paths)
        assert prescore is not None
        prescore(candidates)
    assert f"on the Dask cluster at {dask_scheduler}" in caplog.text
    assert [scorer(keeps, precisions) for keeps, precisions in candidates] == expected


@pytest.mark.subprocess
def test_a_batch_of_candidates_that_fails_in_a_worker_fails_the_search_naming_it(
        tiny_params: Params, tiny_data: dict[str, Path], tiny_transferred: dict[str, Any], tmp_path: Path) -> None:
    """A batch whose worker cannot read the target fails the search with the reader's own error, naming the file,
    and a note naming the batch; the stage's scorer remembers none of that batch's candidates."""
    from groundwork.search.fanout import SEARCH_SPLITS, prescorer

    model, _ = load_model(tiny_transferred["model"])
    data, _ = load_dataset(tiny_data["target"], splits=SEARCH_SPLITS)
    scorer = make_scorer(tiny_params, model, data, device=torch.device("cpu"))
    candidates = _random_candidates(tiny_params, model)
    missing = tmp_path / "gone.npz"
    prescore = prescorer(tiny_params, scorer, transferred=tiny_transferred["model"], target=missing, workers=2)
    assert prescore is not None
    with pytest.raises(DataError, match=r"gone\.npz") as raised:
        prescore(candidates)
    assert any(note.startswith("in job 'search candidates, batch 1 of ") for note in raised.value.__notes__)
    assert len(scorer.unscored(candidates)) == len(candidates) - 1, "nothing remembered (one candidate drawn twice)"
