"""The adaptive loop's parts against their yardsticks, offline, with the true labels as a simulated annotator.

1. Drift: windows of the stream drawn from target images the champion never trained or tested on, unshifted
   (false alarms) and under each named shift at its default strength (detections); KS on softmax outputs
   (Bonferroni over the classes), MMD on embeddings, and the loop's alarm (either test, each at alpha / 2).
   The champion's accuracy on each shift's windows is printed beside it: a shift worth detecting costs accuracy.
2. Labels: the shifted images split in two (a pool to label, an evaluation set); rounds of labelling, each
   followed by adapt's own fine-tune (from the fp32 model, new labels plus replay); uncertainty sampling against
   random picks, several seeds. Printed: accuracy per label count, and how many labels each strategy needs to
   reach random sampling's accuracy at the largest count.
3. Forgetting: at the largest count, accuracy on the shifted evaluation set and on the original target test
   split, with and without the replay buffer, and the share of the lost accuracy recovered.
4. A sequence of worlds (`--parts sequence`): five shifts in turn (rotation 30, 45 degrees, thickness, noise,
   contrast), each world's images split into a pool and an evaluation set; per world, the current model's most
   uncertain `ask.queue_size` pool images are labelled and learnt, four ways: the loop as built (from the current
   model, the new labels plus replay of target, source and earlier worlds' labels), fine-tuning on the new labels
   alone, retraining from the pipeline's model on every label so far (with the target and source replay), and
   online EWC (adapt's fine-tune from the current model on the new labels alone, plus the penalty at
   `--ewc-weight`). After every world, the accuracy on every world seen so far. Printed: average accuracy over all
   worlds at the end, backward transfer (each earlier world's final accuracy minus its accuracy right after it was
   learnt), the loop's paired difference from the others on the same evaluation images (95% interval), and
   seconds per iteration (first and last).

Needs the data and models of a pipeline run (`make run`). Every figure is measured in this run, side by side.

Usage: PYTHONPATH=. .venv/bin/python bench/adaptive.py [--parts drift labels sequence] [--window 250]
       [--trials 200] [--seeds 3] [--shift rotation] [--ewc-weight 1000] [--model models/transfer.pt]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from groundwork.adaptive.continual import adapted, replay_buffer
from groundwork.adaptive.drift import check_batch, model_outputs
from groundwork.adaptive.ewc import consolidate, with_consolidation
from groundwork.adaptive.selection import informativeness, pick
from groundwork.adaptive.shifts import apply_shift, class_prior_weights
from groundwork.adaptive.simulate import unseen_images
from groundwork.data.datasets import Split, load_dataset
from groundwork.evaluation.statistics import paired_test
from groundwork.models.checkpoint import load_model
from groundwork.params import Params, load_params
from groundwork.params.adaptive import AdaptParams
from groundwork.training.loop import derived_seed, logits_of

CPU = torch.device("cpu")
DEFAULT_STRENGTHS = {"rotation": 30.0, "thickness": 2.0, "noise": 0.1, "contrast": 0.7, "class_prior": 0.9}
LABEL_COUNTS = (10, 20, 30, 50, 70, 100)


def accuracy(model: torch.nn.Module, split: Split) -> float:
    predicted = logits_of(model, torch.from_numpy(split.images), device=CPU).argmax(1).numpy()
    return float((predicted == split.labels).mean())


def shifted_window(unseen: Split, shift: str, size: int, rng: np.random.Generator) -> Split:
    weights = class_prior_weights(unseen.labels, DEFAULT_STRENGTHS[shift]) if shift == "class_prior" else None
    chosen = rng.choice(len(unseen), size=size, replace=False, p=weights)
    images = torch.from_numpy(unseen.images[chosen])
    if shift != "none":
        images = apply_shift(shift, DEFAULT_STRENGTHS.get(shift, 0.0), images,
                             torch.Generator().manual_seed(int(rng.integers(2**31))))
    return Split(images.numpy(), unseen.labels[chosen])


def drift_rates(params: Params, model: torch.nn.Module, reference: Split, unseen: Split, *, window: int,
                trials: int) -> None:
    cfg = params.adaptive.monitor
    outputs = model_outputs(model, reference.images)
    print(f"\n## Drift at a window of {window} images (reference: {len(reference)} target test images; "
          f"alpha {cfg.alpha}, {cfg.permutations} permutations)\n")
    print("| shift (strength) | windows | KS rejects | MMD rejects | alarm (either, alpha/2 each) "
          "| champion accuracy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for shift in ("none", *DEFAULT_STRENGTHS):
        rng = np.random.default_rng(derived_seed(params.seed, "bench-drift", shift))
        count = trials if shift == "none" else max(20, trials // 4)  # false alarms need the most windows
        ks = mmd = alarms = 0
        accuracies = []
        for trial in range(count):
            batch = shifted_window(unseen, shift, window, rng)
            result = check_batch(outputs, model_outputs(model, batch.images), cfg, seed=trial)
            ks, mmd, alarms = ks + result.ks_drift, mmd + result.mmd_drift, alarms + result.alarm
            accuracies.append(accuracy(model, batch))
        strength = "" if shift == "none" else f" ({DEFAULT_STRENGTHS[shift]:g})"
        print(f"| {shift}{strength} | {count} | {ks / count:.1%} | {mmd / count:.1%} | {alarms / count:.1%} | "
              f"{statistics.mean(accuracies):.1%} |")


def labels_needed(curve: dict[int, float], goal: float) -> float | None:
    """The label count at which a mean accuracy curve first reaches `goal`, linearly interpolated."""
    counts = sorted(curve)
    previous = (0, None)
    for count in counts:
        if curve[count] >= goal:
            if previous[1] is None or previous[1] >= goal:
                return float(count)
            low, accuracy_low = previous
            return low + (goal - accuracy_low) / (curve[count] - accuracy_low) * (count - low)
        previous = (count, curve[count])
    return None


def active_learning(params: Params, model: torch.nn.Module, data: dict[str, Split], source: Split, unseen: Split,
                    *, shift: str, seeds: int, strategies: list[str]) -> None:
    cfg = params.adaptive.adapt
    rng = np.random.default_rng(7)
    order = rng.permutation(len(unseen))
    half = len(unseen) * 5 // 8
    clean_eval = Split(unseen.images[order[half:]], unseen.labels[order[half:]])
    generator = torch.Generator().manual_seed(11)
    shifted = apply_shift(shift, DEFAULT_STRENGTHS[shift], torch.from_numpy(unseen.images[order]), generator).numpy()
    pool = Split(shifted[:half], unseen.labels[order[:half]])
    evaluation = Split(shifted[half:], unseen.labels[order[half:]])
    before, clean = accuracy(model, evaluation), accuracy(model, clean_eval)
    original_before = accuracy(model, data["test"])
    print(f"\n## Labels on the {shift} ({DEFAULT_STRENGTHS[shift]:g}) stream: {len(pool)} images to label, "
          f"{len(evaluation)} to evaluate\n")
    print(f"champion before adapting: {before:.1%} on the shifted evaluation set ({clean:.1%} on the same images "
          f"unshifted: {100 * (clean - before):.1f} points lost); {original_before:.1%} on the original test split")
    replay = replay_buffer(data["train"], source, cfg, seed=params.seed)
    curves: dict[str, list[dict[int, float]]] = {s: [] for s in strategies}
    finals: dict[str, list[tuple[float, float]]] = {s: [] for s in strategies}
    started = time.perf_counter()
    for strategy in strategies:
        for seed in range(seeds):
            chosen: list[int] = []
            current = model
            curve = {}
            picker = torch.Generator().manual_seed(100 + seed)
            for count in LABEL_COUNTS:
                remaining = np.setdiff1d(np.arange(len(pool)), chosen)
                scores = informativeness(strategy, current, torch.from_numpy(pool.images[remaining]),
                                         mc_samples=params.adaptive.ask.mc_samples, generator=picker)
                chosen += remaining[pick(scores, count - len(chosen))].tolist()
                new = Split(pool.images[chosen], pool.labels[chosen])
                current, _ = adapted(model, new, replay, cfg, params.augment, device=CPU, seed=params.seed + seed)
                curve[count] = accuracy(current, evaluation)
            curves[strategy].append(curve)
            finals[strategy].append((curve[LABEL_COUNTS[-1]], accuracy(current, data["test"])))
    print(f"({len(strategies) * seeds * len(LABEL_COUNTS)} fine-tunes in {time.perf_counter() - started:.0f} s)\n")
    print("| labels | " + " | ".join(strategies) + " |")
    print("| --- | " + " | ".join("---" for _ in strategies) + " |")
    means = {s: {c: statistics.mean(curve[c] for curve in curves[s]) for c in LABEL_COUNTS} for s in strategies}
    for count in LABEL_COUNTS:
        cells = [f"{means[s][count]:.1%} ± {statistics.pstdev(c[count] for c in curves[s]):.1%}" for s in strategies]
        print(f"| {count} | " + " | ".join(cells) + " |")
    goal = means["random"][LABEL_COUNTS[-1]]
    print(f"\nlabels needed to reach random sampling's {goal:.1%} at {LABEL_COUNTS[-1]} labels (mean curves):")
    for strategy in strategies:
        needed = labels_needed(means[strategy], goal)
        saving = "" if needed is None else f", {1 - needed / LABEL_COUNTS[-1]:.0%} fewer than random"
        print(f"  {strategy}: {'not reached' if needed is None else f'{needed:.0f}'}{saving}")
    best = max(strategies, key=lambda s: means[s][LABEL_COUNTS[-1]])
    forgetting(params, model, cfg, data, source, pool, evaluation, chosen_by=best, before=before, clean=clean,
               original_before=original_before, finals=finals[best])


def forgetting(params: Params, model: torch.nn.Module, cfg: AdaptParams, data: dict[str, Split], source: Split,
               pool: Split, evaluation: Split, *, chosen_by: str, before: float, clean: float, original_before: float,
               finals: list[tuple[float, float]]) -> None:
    """Replay against none, on the labels `chosen_by` picked (first seed's picks, recomputed in one shot)."""
    scores = informativeness(chosen_by, model, torch.from_numpy(pool.images), mc_samples=params.adaptive.ask.mc_samples,
                             generator=torch.Generator().manual_seed(100))
    chosen = pick(scores, LABEL_COUNTS[-1])
    new = Split(pool.images[chosen], pool.labels[chosen])
    no_replay_cfg = cfg.model_copy(update={"replay_target": 0, "replay_source": 0})
    print(f"\n## Forgetting after adapting on {LABEL_COUNTS[-1]} labels ({chosen_by})\n")
    print("| replay | shifted evaluation | recovered of the lost accuracy | original test | change (points) |")
    print("| --- | --- | --- | --- | --- |")
    shifted_acc, original = (statistics.mean(f[0] for f in finals), statistics.mean(f[1] for f in finals))
    rows = [(f"{cfg.replay_target} target + {cfg.replay_source} source (rounds above, mean over seeds)", shifted_acc,
             original)]
    for label, settings in (("none (the new labels alone, one shot)", no_replay_cfg),
                            (f"{cfg.replay_target} target + {cfg.replay_source} source (one shot)", cfg)):
        replay = replay_buffer(data["train"], source, settings, seed=params.seed)
        challenger, _ = adapted(model, new, replay, settings, params.augment, device=CPU, seed=params.seed)
        rows.append((label, accuracy(challenger, evaluation), accuracy(challenger, data["test"])))
    for label, shifted_acc, original in rows:
        recovered = (shifted_acc - before) / (clean - before) if clean > before else float("nan")
        print(f"| {label} | {shifted_acc:.1%} | {recovered:.0%} | {original:.1%} | "
              f"{100 * (original - original_before):+.1f} |")


# each costs the default run's model 5 points or more (rotation 15 cost it 0.3, rotation 20 1.7, on the same images)
WORLDS = (("rotation", 30.0), ("rotation", 45.0), ("thickness", 2.0), ("noise", 0.1), ("contrast", 0.5))
METHODS = ("loop (replay)", "fine-tune, no replay", "retrain on all labels", "EWC")


def sequence(params: Params, model: torch.nn.Module, data: dict[str, Split], source: Split, unseen: Split, *,
             ewc_weight: float) -> None:
    cfg = params.adaptive.adapt
    order = np.random.default_rng(17).permutation(len(unseen))
    half = len(unseen) * 5 // 8
    worlds = []
    for index, (shift, strength) in enumerate(WORLDS):
        moved = apply_shift(shift, strength, torch.from_numpy(unseen.images[order]),
                            torch.Generator().manual_seed(1000 + index)).numpy()
        worlds.append((Split(moved[:half], unseen.labels[order[:half]]),
                       Split(moved[half:], unseen.labels[order[half:]])))
    clean = accuracy(model, Split(unseen.images[order[half:]], unseen.labels[order[half:]]))
    print(f"\n## A sequence of {len(WORLDS)} worlds, {params.adaptive.ask.queue_size} labels each "
          f"({len(worlds[0][1])} evaluation images a world)\n")
    print(f"the pipeline's model on the same images unshifted: {clean:.1%}; on each world before any adapting: " +
          ", ".join(f"{shift} {strength:g}: {accuracy(model, evaluation):.1%}"
                    for (shift, strength), (_, evaluation) in zip(WORLDS, worlds, strict=True)))
    no_replay = cfg.model_copy(update={"replay_target": 0, "replay_source": 0, "replay_learnt": 0})
    empty = Split(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64))
    results, correct, seconds = {}, {}, {}
    for method in METHODS:
        current, labelled, consolidation = model, [], None
        after: list[list[float]] = []  # after[k][j]: world j's accuracy once world k was learnt
        seconds[method] = []
        for index, (pool, _) in enumerate(worlds):
            scores = informativeness("entropy", current, torch.from_numpy(pool.images),
                                     mc_samples=params.adaptive.ask.mc_samples, generator=torch.Generator())
            chosen = pick(scores, params.adaptive.ask.queue_size)
            new = Split(pool.images[chosen], pool.labels[chosen])
            earlier = Split(np.concatenate([s.images for s in labelled] or [empty.images]),
                            np.concatenate([s.labels for s in labelled] or [empty.labels]))
            started = time.perf_counter()
            seed = derived_seed(params.seed, "sequence", index)
            if method == "loop (replay)":
                replay = replay_buffer(data["train"], source, cfg, seed=seed, learnt_labels=earlier)
                current, _ = adapted(current, new, replay, cfg, params.augment, device=CPU, seed=seed)
            elif method == "fine-tune, no replay":
                current, _ = adapted(current, new, empty, no_replay, params.augment, device=CPU, seed=seed)
            elif method == "retrain on all labels":
                everything = Split(np.concatenate([earlier.images, new.images]),
                                   np.concatenate([earlier.labels, new.labels]))
                current, _ = adapted(model, everything, replay_buffer(data["train"], source, cfg, seed=seed), cfg,
                                     params.augment, device=CPU, seed=seed)
            else:
                # the loop's fine-tune on the new labels alone, paying for moving what earlier worlds needed
                current, _ = adapted(current, new, empty, no_replay, params.augment, device=CPU, seed=seed,
                                     regularised=partial(with_consolidation, consolidation=consolidation,
                                                         weight=ewc_weight))
                consolidation = consolidate(current, *new.tensors(), earlier=consolidation)
            seconds[method].append(time.perf_counter() - started)
            labelled.append(new)
            after.append([accuracy(current, evaluation) for _, evaluation in worlds[:index + 1]])
        last = after[-1]
        results[method] = (statistics.mean(last), statistics.mean(last[j] - after[j][j] for j in range(len(last) - 1)))
        correct[method] = np.concatenate([
            logits_of(current, torch.from_numpy(evaluation.images), device=CPU).argmax(1).numpy() == evaluation.labels
            for _, evaluation in worlds])
        print(f"  {method}: after each world, the average over the worlds seen: " +
              ", ".join(f"{statistics.mean(row):.1%}" for row in after))
    print("\n| method | average accuracy, all worlds | backward transfer (points) | loop minus it, paired (points, "
          "95%) | seconds per iteration: first, last |")
    print("| --- | --- | --- | --- | --- |")
    for method in METHODS:
        average, backward = results[method]
        if method == METHODS[0]:
            paired = "-"
        else:
            test = paired_test(correct[method], correct[METHODS[0]])
            paired = (f"{-test.loss_points:+.2f} [{-test.loss_high_points:+.2f}, {-test.loss_low_points:+.2f}] "
                      f"(p = {test.p_value:.2g})")
        print(f"| {method} | {average:.2%} | {100 * backward:+.2f} | {paired} | "
              f"{seconds[method][0]:.1f}, {seconds[method][-1]:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=250, help="images per window for the drift tests")
    parser.add_argument("--trials", type=int, default=200, help="unshifted windows (each shift gets a quarter)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of each labelling strategy")
    parser.add_argument("--shift", default="rotation", choices=[s for s in DEFAULT_STRENGTHS if s != "class_prior"],
                        help="the shift the labelling rounds adapt to")
    parser.add_argument("--strategies", nargs="+", default=["random", "entropy", "margin", "bald"])
    parser.add_argument("--parts", nargs="+", default=["drift", "labels"], choices=["drift", "labels", "sequence"],
                        help="drift: detection and false alarms; labels: labelling rounds and forgetting; "
                             "sequence: five worlds in turn")
    parser.add_argument("--ewc-weight", type=float, default=1000.0, help="EWC's penalty weight (sequence)")
    parser.add_argument("--model", type=Path, default=Path("models/transfer.pt"),
                        help="the model that watches, picks and is adapted (the loop's: models/champion/champion.pt)")
    args = parser.parse_args()
    if "random" not in args.strategies:
        parser.error("--strategies must include random, the baseline")
    params = load_params()
    data, _ = load_dataset(Path("data/processed/target.npz"), splits=("train", "test"))
    source, _ = load_dataset(Path("data/processed/source.npz"), splits=("train",))
    model, _ = load_model(args.model)
    torch.set_num_threads(2)
    unseen = unseen_images(Path("data/processed/target.npz"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(unseen)} unseen target images")
    if "drift" in args.parts:
        drift_rates(params, model, data["test"], unseen, window=args.window, trials=args.trials)
    if "labels" in args.parts:
        active_learning(params, model, data, source["train"], unseen, shift=args.shift, seeds=args.seeds,
                        strategies=args.strategies)
    if "sequence" in args.parts:
        sequence(params, model, data, source["train"], unseen, ewc_weight=args.ewc_weight)


if __name__ == "__main__":
    main()
