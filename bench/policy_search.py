"""Does the per-layer search beat the simple choices after compress's full recipe? At each budget, over several
target splits (ingest seeds, each with its own transfer from the pipeline's pretrained model) and search seeds:

  agent           the search stage's agent (`search.agent`), `search.episodes` candidates
  random          random search, as many candidates
  tpe             Optuna's TPE sampler (multivariate), as many candidates, each proposing the per-layer actions the
                  agent proposes (the environment's wall and width grid apply to both)
  uniform         one share for every layer, the largest within budget, on the width grid
  global_ranking  channels removed across layers by BatchNorm scale
  structured      compress's `structured` widths at the largest `channels_kept` that meets the budget (for a
                  latency budget, one whose widths lie on the table's grid)

Every method scores candidates with the search's own reward (`search.reward`), through one scorer per group, so a
candidate two methods find is scored once. Each method's best network then goes through compress's `searched`
recipe (rounds of channel removal, each distilled and fine-tuned, the seed from the group's seed) and is scored on
the test split in the precision it ships in (int8 through ONNX Runtime, the ends as `compress.quantization` keeps
them, and with `--precision mixed` the layers its policy leaves fp32) and in fp32.

Statistics, per budget, for the agent against each other method: the gain in test accuracy (points) averaged over
the (split, seed) groups with a two-stage bootstrap interval, groups then images (the splits share one pool of
digits, so their test images overlap: `groundwork.evaluation.statistics.clustered_gain`), and the exact McNemar test
in each group. Also each method's mean and standard deviation over the groups.

Resumable: every split's data and transfer, every group's search, and every fine-tuned network is a cell in
--workdir, written when done; a rerun does only what is missing and `--report-only` prints the tables of what is
cached, with their counts. A group's cells are valid for the params they were made with (a digest of the search,
compress and model params is in every cell name). Needs a pipeline run's pretrained model and latency table
(`make run`).

Usage: PYTHONPATH=. .venv/bin/python bench/policy_search.py --workdir /work/bench-cells/policy-search
       [--budgets latency:1.0 size:0.5 latency:0.5 latency:0.25] [--splits 1 2 3] [--seeds 0 1] [--episodes N]
       [--precision int8|mixed] [--report-only]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundwork.compression.export import (
    calibration_images,
    export_onnx,
    fp32_cells,
    onnx_logits,
    onnx_session,
    quantize_int8,
)
from groundwork.compression.finetuning import channel_pruned, fine_tuner
from groundwork.compression.structured import narrower
from groundwork.data.atomic import write_json
from groundwork.data.corpus import build_datasets
from groundwork.data.datasets import Dataset, load_dataset, save_dataset
from groundwork.evaluation.statistics import clustered_gain, paired_test
from groundwork.models.checkpoint import load_model, save_checkpoint
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params, load_params
from groundwork.search.compare import compare_methods, search_budget
from groundwork.search.env import PruningEnv
from groundwork.search.latency import read_latency_table
from groundwork.search.methods import SearchResult
from groundwork.search.scoring import make_scorer
from groundwork.tracking.runs import NullTracker
from groundwork.training.loop import logits_of
from groundwork.training.transfer_learning import target_test_accuracy, transfer

CPU = torch.device("cpu")
METHODS = ("agent", "random", "tpe", "uniform", "global_ranking", "structured")
INT8_AGENT = "agent_int8"  # with --precision mixed: the agent of the int8 search of the same group, for comparison


@dataclass(frozen=True)
class Group:
    """One search: a budget ("latency:1.0", "size:0.5"), a target split (ingest seed) and a search seed."""

    budget: str
    split: int
    seed: int

    def name(self, digest: str) -> str:
        return f"search-{self.budget.replace(':', '')}-split{self.split}-seed{self.seed}-{digest}"


def params_digest(params: Params) -> str:
    """What a cell depends on beyond its own coordinates: the search, compress and model params."""
    relevant = params.model_dump(mode="json", include={"model", "search", "compress", "augment", "precision"})
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:10]


def with_precision(params: Params, precision: str) -> Params:
    """`params` with `search.precision` set."""
    return params.model_copy(update={"search": params.search.model_copy(update={"precision": precision})})


def recipe_name(params: Params, group: Group, widths: list[int], precisions: list[str]) -> str:
    """A fine-tuned network's cell: the recipe does not depend on the precision action of the search that chose it
    (so an int8 search's cells serve a mixed one), only on the widths and the cells left fp32 beyond the ends."""
    digest = params_digest(with_precision(params, "int8"))
    fp32 = fp32_cells(precisions)
    ends = [0, len(precisions) - 1] if params.compress.quantization.keep_ends_fp32 else []
    suffix = "" if fp32 == ends else "-fp32at" + "-".join(map(str, fp32))
    return f"recipe-split{group.split}-seed{group.seed}-{digest}-{'x'.join(map(str, widths))}{suffix}.json"


def with_budget(params: Params, budget: str, seed: int) -> Params:
    """`params` searching at `budget` ("latency:<share of structured_int8>", "size:<share of structured_int8>" or
    "macs:<share>"), seeded `seed`."""
    kind, share = budget.split(":")
    key = f"{kind}_kept"
    search = params.search.model_copy(update={"budget_of": kind, key: float(share)})
    return params.model_copy(update={"search": search, "seed": seed})


def prepare_split(params: Params, split: int, workdir: Path, pretrained: Path) -> tuple[Path, Path]:
    """The target data of ingest seed `split` (as ingest builds it) and its own transfer from `pretrained` (as
    transfer trains it), each a cell written once."""
    folder = workdir / f"split{split}"
    target, transferred = folder / "target.npz", folder / "transfer.pt"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        save_dataset(target, build_datasets(params.ingest, split)[1])
    if not transferred.exists():
        data, _ = load_dataset(target, splits=("train", "val", "test", "pool"))
        model, _ = transfer(pretrained, data, params, seed=split)
        save_checkpoint(transferred, model.cpu(), stage="transfer", params=params.model_dump(mode="json"),
                        metrics={"transfer_accuracy": target_test_accuracy(model, data, params)})
    return target, transferred


def tpe_search(env: PruningEnv, *, candidates: int, seed: int) -> SearchResult:
    """Optuna's TPE sampler proposing each layer's action in turn (define-by-run), told each network's reward."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # multivariate, group
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True))
    result = SearchResult("tpe")
    for _ in range(candidates):
        trial = study.ask()
        env.reset()
        done, reward = False, 0.0
        step, info = 0, {}
        while not done:
            _, reward, done, _, info = env.step(trial.suggest_float(f"step{step}", 0.0, 1.0))
            step += 1
        study.tell(trial, reward)
        result.add(env, reward, env.keeps, info["precisions"])
    return result


def structured_widths(params: Params, env: PruningEnv) -> tuple[int, ...]:
    """`structured`'s widths at the largest `channels_kept` (in steps of one channel of the widest layer) that
    meets the budget, among those the budget's cost can price (a latency table has the grid's widths only)."""
    arch = params.model
    steps = max(arch.layer_widths())
    fitting = []
    for step in range(math.ceil(params.search.min_keep * steps), steps + 1):
        try:
            widths = narrower(arch, step / steps).layer_widths()
        except ValueError:  # narrower than a model may be
            continue
        on_grid = all(width in choices for width, choices in zip(widths, env.cost.widths, strict=True))
        keeps = [width / full for width, full in zip(widths, env.full, strict=True)]
        if (on_grid or params.search.budget_of != "latency") and env.network_cost(keeps) <= env.budget + 1e-12:
            fitting.append(widths)
    if not fitting:
        return env.widths(env.cheapest()[0])
    return fitting[-1]


def search_cell(params: Params, group: Group, data: Dataset, transferred: Path, latency: Path,
                path: Path) -> dict[str, Any]:
    """Every method's best network of one group, with its reward and the candidates scored."""
    if path.exists():
        return json.loads(path.read_text())
    model, _ = load_model(transferred)
    budget = search_budget(params, read_latency_table(latency))
    score = make_scorer(params, model, data, device=CPU)
    started = time.perf_counter()
    results = compare_methods(model, params.search, score=score, cost=budget.cost, budget=budget.limit,
                              seed=params.seed)
    env = PruningEnv(model.arch, score, budget=budget.limit, cost=budget.cost)
    results["tpe"] = tpe_search(env, candidates=params.search.episodes, seed=params.seed)
    chosen = {name: {"widths": list(result.widths[result.best]), "precisions": result.best_precisions,
                     "reward": result.best_reward, "cost": result.costs[result.best],
                     "candidates": len(result.rewards)}
              for name, result in results.items()}
    structured = [width / full for width, full in zip(structured_widths(params, env), env.full, strict=True)]
    chosen["structured"] = {"widths": list(env.widths(structured)), "precisions": env.cells(),
                            "reward": score(structured, env.cells()), "cost": env.network_cost(structured),
                            "candidates": 1}
    cell = {"budget": group.budget, "split": group.split, "seed": group.seed, "budget_limit": budget.limit,
            "budget_asked": budget.asked, "unit": budget.cost.unit, "seconds": time.perf_counter() - started,
            "methods": chosen}
    write_json(path, cell)
    return cell


def test_correct(model: DigitNet, data: Dataset, params: Params, precisions: list[str]) -> dict[str, list[int]]:
    """Which test images the network gets right in fp32 (PyTorch) and in int8 (ONNX Runtime, as compress ships
    `searched_int8`: the cells `precisions` leaves fp32 excluded from quantization)."""
    images, labels = data["test"].tensors()
    fp32 = logits_of(model, images, device=CPU).argmax(1) == labels
    with tempfile.TemporaryDirectory() as scratch:
        onnx_fp32, onnx_int8 = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        export_onnx(model, onnx_fp32)
        quantize_int8(onnx_fp32, onnx_int8, calibration_images(data, params.compress.calibration_images),
                      params.compress.quantization, fp32_layers=fp32_cells(precisions))
        int8 = onnx_logits(onnx_session(onnx_int8), images).argmax(1) == labels
    return {"fp32": fp32.int().tolist(), "int8": int8.int().tolist()}


def recipe_cell(params: Params, widths: list[int], precisions: list[str], data: Dataset, transferred: Path,
                path: Path) -> dict[str, Any]:
    """The network at `widths` after compress's `searched` recipe, scored on the test images in `precisions` (a
    cell per network: methods of one group that chose the same widths and precisions share it)."""
    if path.exists():
        return json.loads(path.read_text())
    teacher, _ = load_model(transferred)
    tune = fine_tuner(params, data, teacher, CPU, NullTracker())
    pruned = channel_pruned(load_model(transferred)[0], teacher.arch.with_widths(widths), params, tune, "searched")
    cell = {"widths": widths, "precisions": precisions, "correct": test_correct(pruned, data, params, precisions)}
    write_json(path, cell)
    return cell


def report(rows: dict[str, dict[tuple[int, int], dict[str, Any]]], budgets: list[str], expected: int,
           methods: tuple[str, ...] = METHODS) -> None:
    """Per budget: each method's test accuracy over the groups, and the agent's gain over each with its
    clustered interval and the McNemar tests per group (with a mixed search, also over the int8 search's agent)."""
    for budget in budgets:
        groups = rows.get(budget, {})
        complete = {key: row for key, row in groups.items() if all(m in row["after"] for m in methods)}
        print(f"\n### {budget}: {len(complete)} of {expected} (split, seed) groups complete")
        if not complete:
            continue
        first = next(iter(complete.values()))
        asked = "" if first["budget_limit"] == first["budget_asked"] else \
            f" (asked {first['budget_asked']:.4g}: below the fastest network, so that one's cost is used)"
        limit = first["budget_limit"]
        print(f"budget {limit:,.0f} {first['unit']}{asked}\n" if limit >= 1000 else
              f"budget {limit:.4g} {first['unit']}{asked}\n")
        print("| method | test accuracy int8, mean ± sd | fp32 | agent's gain, points [95% CI] "
              "| McNemar p per group (agent better +, worse -) | widths (first group) |")
        print("| --- | --- | --- | --- | --- | --- |")
        keys = sorted(complete)
        for method in methods:
            accuracy = {precision: [float(np.mean(complete[k]["after"][method][precision])) * 100 for k in keys]
                        for precision in ("int8", "fp32")}
            spread = {p: f"{statistics.mean(v):.2f} ± {statistics.pstdev(v):.2f}" for p, v in accuracy.items()}
            gain, tests = "", ""
            if method != "agent":
                reference = [np.asarray(complete[k]["after"][method]["int8"], bool) for k in keys]
                agent = [np.asarray(complete[k]["after"]["agent"]["int8"], bool) for k in keys]
                point, low, high = clustered_gain(reference, agent, seed=0)
                gain = f"{point:+.2f} [{low:+.2f}, {high:+.2f}]"
                found = [paired_test(r, a) for r, a in zip(reference, agent, strict=True)]
                tests = " ".join(f"{'+' if t.wins > t.losses else '-' if t.losses > t.wins else '='}{t.p_value:.2g}"
                                 for t in found)
            widths = complete[keys[0]]["methods"][method]["widths"]
            print(f"| {method} | {spread['int8']} | {spread['fp32']} | {gain} | {tests} | {widths} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="where every cell is cached")
    parser.add_argument("--budgets", nargs="+", default=["latency:1.0", "size:0.5", "latency:0.5", "latency:0.25"],
                        help="latency:<share of structured_int8's latency>, size:<share of its bytes of weights> or "
                             "macs:<share of the multiply-adds>")
    parser.add_argument("--splits", type=int, nargs="+", default=[1, 2, 3], help="ingest seeds, one transfer each")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="search and fine-tuning seeds")
    parser.add_argument("--models", type=Path, default=Path("models"), help="folder of a pipeline run's models")
    parser.add_argument("--latency", type=Path, default=Path("reports/latency.csv"), help="this machine's table")
    parser.add_argument("--precision", choices=("int8", "mixed"), default=None,
                        help="search.precision for the agent, random search and TPE (default: params.yaml's)")
    parser.add_argument("--episodes", type=int, default=None,
                        help="candidates per searching method (default: search.episodes; a fifth of them warm-up)")
    parser.add_argument("--report-only", action="store_true", help="print the tables of the cached cells, run none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = load_params()
    if args.precision is not None:
        base = with_precision(base, args.precision)
    mixed = base.search.precision == "mixed"
    if args.episodes is not None:
        base = base.model_copy(update={"search": base.search.model_copy(update={
            "episodes": args.episodes, "warmup_episodes": max(1, args.episodes // 5)})})
    rows: dict[str, dict[tuple[int, int], dict[str, Any]]] = {}
    for split in args.splits:
        split_ready = (args.workdir / f"split{split}" / "transfer.pt").exists()
        if args.report_only and not split_ready:
            continue
        target, transferred = prepare_split(base, split, args.workdir, args.models / "pretrained.pt")
        data, _ = load_dataset(target, splits=("train", "val", "test", "pool"))
        for seed in args.seeds:
            for budget in args.budgets:
                params = with_budget(base, budget, seed)
                digest = params_digest(params)
                group = Group(budget, split, seed)
                path = args.workdir / f"{group.name(digest)}.json"
                if args.report_only and not path.exists():
                    continue
                cell = search_cell(params, group, data, transferred, args.latency, path)
                after = {}
                for method in METHODS:
                    chosen = cell["methods"][method]
                    widths, precisions = chosen["widths"], chosen["precisions"]
                    recipe = args.workdir / recipe_name(params, group, widths, precisions)
                    if args.report_only and not recipe.exists():
                        continue
                    after[method] = recipe_cell(params, widths, precisions, data, transferred, recipe)["correct"]
                if mixed:
                    int8 = with_precision(params, "int8")
                    int8_search = args.workdir / f"{group.name(params_digest(int8))}.json"
                    if int8_search.exists():
                        chosen = json.loads(int8_search.read_text())["methods"]["agent"]
                        cell["methods"][INT8_AGENT] = chosen
                        recipe = args.workdir / recipe_name(int8, group, chosen["widths"], chosen["precisions"])
                        if recipe.exists():
                            after[INT8_AGENT] = json.loads(recipe.read_text())["correct"]
                rows.setdefault(budget, {})[(split, seed)] = {**cell, "after": after}
                if not args.report_only:
                    print(f"{budget} split {split} seed {seed} done", flush=True)
    print(f"\n{len(args.splits) * len(args.seeds)} (split, seed) groups per budget; "
          f"{base.search.episodes} candidates for the agent, random search and TPE; reward {base.search.reward}, "
          f"precision {base.search.precision}")
    report(rows, args.budgets, len(args.splits) * len(args.seeds), (*METHODS, INT8_AGENT) if mixed else METHODS)


if __name__ == "__main__":
    main()
