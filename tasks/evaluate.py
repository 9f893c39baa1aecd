"""evaluate: every model variant on the target's test split: accuracy and macro F1 with 95% intervals, macro
precision and recall, a paired test of each against the fp32 model on the same images (exact McNemar, with the
accuracy lost and its interval), parameters, bytes of the deployable file, and latency at batch 1 and throughput
at a large batch timed in interleaved rounds, each a ratio to fp32_onnx measured in the same rounds. The variant
the selection rule picks is registered, and the gate compares it with the served champion on test images neither
learnt from. Writes a JSON of metrics, a CSV table, confusion matrices and a Pareto plot with intervals."""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from tqdm.auto import tqdm

from groundwork.card import lineage, registered_model_description, training_data, version_card
from groundwork.compression.export import TIMING_THREADS, onnx_logits, onnx_session, size_report, state_dict_bytes
from groundwork.compression.names import FP32_WEIGHTS, REFERENCE, SERVED
from groundwork.data.atomic import atomic_path
from groundwork.data.datasets import NUM_CLASSES, load_dataset
from groundwork.entrypoint import stage_cli
from groundwork.evaluation.champion import image_ids, learnt_from, unseen_mask
from groundwork.evaluation.gate import decide
from groundwork.evaluation.selection import BASELINE, Gain, Selection, dominated_by, select
from groundwork.evaluation.statistics import (
    PairedTest,
    Ratio,
    accuracy_interval,
    f1_interval,
    paired_f1_test,
    paired_test,
    tie_upper_bound_points,
)
from groundwork.evaluation.timing import Timings, interleaved_timings
from groundwork.evaluation.variant_table import variant_row
from groundwork.evaluation.variants import Variant, load_variants
from groundwork.params import Params
from groundwork.plots import confusion_grid, pareto_plot
from groundwork.serving.package import find_served_model, log_served_model, served_contract
from groundwork.tracking.registry import Champion, GateDecision
from groundwork.tracking.registry_gate import ModelRegistry, Predict
from groundwork.tracking.runs import NullTracker, RunLog, Tracker

log = logging.getLogger(__name__)
CHAMPION_KEY = "@champion"  # the registered champion among the timed predictors (no variant has this name)


def classification_scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-averaged precision, recall and F1."""
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average="macro", zero_division=0)
    return {"accuracy": float(np.mean(labels == predicted)), "precision": float(precision),
            "recall": float(recall), "f1": float(f1)}


def scores_with_intervals(labels: np.ndarray, predicted: np.ndarray, reference: np.ndarray, *,
                          seed: int) -> tuple[dict[str, float], PairedTest]:
    """A variant's scores with 95% intervals for accuracy (Wilson) and macro F1 (bootstrap), and its paired test
    against the reference's predictions on the same images."""
    correct = predicted == labels
    accuracy_low, accuracy_high = accuracy_interval(correct)
    f1_low, f1_high = f1_interval(labels, predicted, classes=NUM_CLASSES, seed=seed)
    test = paired_test(reference == labels, correct)
    return {**classification_scores(labels, predicted), "accuracy_low": accuracy_low,
            "accuracy_high": accuracy_high, "f1_low": f1_low, "f1_high": f1_high,
            "significant_vs_fp32": float(test.significant), **test.as_metrics("vs_fp32")}, test


def objective_gain(objective: str, timings: Timings, sizes: dict[str, int]) -> Gain:
    """gain(a, b): how many times better a is than b on the objective (sizes: exact byte ratios)."""
    def gain(name: str, other: str) -> Ratio:
        if objective == "size":
            value = sizes[other] / sizes[name]
            return Ratio(value, value, value, 0.0, 1)
        return timings.ratio(objective, name, other)
    return gain


def speed_columns(timings: Timings, name: str) -> dict[str, float]:
    """A variant's timing summary and its throughput and latency ratios to fp32_onnx, with 95% intervals."""
    columns = timings.summary(name)
    for objective in ("throughput", "latency"):
        value = timings.ratio(objective, name, BASELINE)
        columns |= {f"{objective}_vs_fp32_onnx": value.value, f"{objective}_vs_fp32_onnx_low": value.low,
                    f"{objective}_vs_fp32_onnx_high": value.high, f"{objective}_vs_fp32_onnx_spread": value.spread}
    return columns


def link_scores(params: Params, found: dict[str, Variant], results: dict[str, dict[str, float]], chosen: str,
                tracker: RunLog) -> dict[str, str]:
    """Each served variant's logged model (the one compress logged, found by its file's digest) with its own
    scores linked to it and to the target data; return variant -> model id. A chosen variant the store holds no
    model of (compress ran without tracking, or against another store) is logged here instead."""
    model_ids: dict[str, str] = {}
    for name in SERVED:
        model_id = find_served_model(tracker, found[name].path)
        if model_id is None and name == chosen:
            model_id = log_served_model(tracker, found[name].path, name, served_contract(params.ingest.target))
            if model_id is not None:
                log.warning("no logged model of %s in the tracking store: logged it in this run", found[name].path)
        if model_id is not None:
            # named variants.<name>.<score>, as in the metrics JSON: the variant's own child run and model
            scores = {f"variants.{name}.{key}": value for key, value in results[name].items()}
            tracker.log_model_metrics(model_id, scores, dataset="target")
            model_ids[name] = model_id
    return model_ids


def gate_decision(params: Params, *, champion: Champion | None, unscored: str, labels: np.ndarray,
                  test_ids: list[str], candidate: np.ndarray, champion_predicted: np.ndarray | None,
                  gain: Ratio | None) -> GateDecision:
    """The gate on the chosen variant's predictions against the champion's, on the test images the champion did
    not learn from (all of them, said so, when its version does not record what it learnt from)."""
    cfg = params.evaluate
    margin = cfg.selection.max_loss_points
    if champion is None or champion_predicted is None:
        own = classification_scores(labels, candidate)[cfg.gate_metric]
        return decide(None, None, metric=cfg.gate_metric, margin_points=margin, objective=cfg.selection.objective,
                      candidate=own, champion=None,
                      champion_version=None if champion is None else champion.version, unscored=unscored)
    shared = unseen_mask(test_ids, champion.learnt_from)
    if not shared.any():
        return decide(None, None, metric=cfg.gate_metric, margin_points=margin, objective=cfg.selection.objective,
                      candidate=float("nan"), champion=None, champion_version=champion.version,
                      unscored="it learnt from every test image of this run: no image scores both fairly")
    y, ours, theirs = labels[shared], candidate[shared], champion_predicted[shared]
    if cfg.gate_metric == "accuracy":
        test = paired_test(theirs == y, ours == y)
        scores = float(np.mean(ours == y)), float(np.mean(theirs == y))
    else:
        test = paired_f1_test(y, theirs, ours, classes=NUM_CLASSES, seed=params.seed)
        scores = classification_scores(y, ours)["f1"], classification_scores(y, theirs)["f1"]
    decision = decide(test, gain, metric=cfg.gate_metric, margin_points=margin, objective=cfg.selection.objective,
                      candidate=scores[0], champion=scores[1], champion_version=champion.version)
    known = "images the champion did not learn from" if champion.learnt_from is not None else (
        "every test image: the champion's version does not record which images it learnt from")
    return GateDecision(decision.promote, decision.reason, decision.metric, decision.candidate, decision.champion,
                        decision.champion_version, {**decision.evidence, "shared_images": known})


def register_chosen(params: Params, selection: Selection, model_ids: dict[str, str],
                    results: dict[str, dict[str, float]], *, decision_for: Callable[[str], GateDecision],
                    seen: list[str], digest: str, weights: Path,
                    tracker: ModelRegistry) -> dict[str, Any]:
    """Register the chosen variant's logged model as a new version, record what it learnt from and its fp32
    `weights` (the checkpoint the adaptive loop fine-tunes), gate it against the champion and give it its card
    (every variant's scores, the rule and why each runner-up lost)."""
    cfg = params.evaluate
    chosen = selection.chosen
    version = None if chosen not in model_ids else tracker.register_model(model_ids[chosen], cfg.registered_model)
    if version is None:  # no tracking (a plain function call): nothing registered, nothing to gate
        return {"registered": False, "variant": chosen}
    decision: GateDecision = decision_for(version)
    tracker.record_learnt_from(cfg.registered_model, version, seen)
    tracker.record_weights(cfg.registered_model, version, weights, form=chosen, labels=())
    tracker.apply_gate(cfg.registered_model, version, decision)
    selection_tags = {"selection.rule": selection.rule, "selection.variant": chosen,
                      **{f"selection.lost.{name}": why for name, why in selection.standings.items() if name != chosen}}
    tracker.set_version_tags(cfg.registered_model, version, selection_tags)
    card = version_card(title=f"{cfg.registered_model} version {version}: the `{chosen}` variant", params=params,
                        trained_on=training_data(params, {"target": digest}),
                        scores={name: variant_row(row) for name, row in results.items()},
                        registered=chosen, decision=decision, selection=(selection.rule, selection.standings),
                        lineage=lineage(Path.cwd(), ("transfer", "compress")))
    tracker.describe(cfg.registered_model, version, registered_model_description(params), card)
    log.info("registered %s version %s (%s); gate: %s", cfg.registered_model, version, chosen, decision.reason)
    return {"registered": True, "model": cfg.registered_model, "version": int(version), "variant": chosen,
            "model_id": model_ids[chosen], "promoted": decision.promote, "reason": decision.reason,
            "candidate_score": decision.candidate, "champion_score": decision.champion,
            "champion_version": decision.champion_version, "evidence": dict(decision.evidence)}


def fp32_weights(variant: str, *, transferred: Path, compressed: Path) -> Path:
    """The fp32 checkpoint a served variant was made from (groundwork.compression.names.FP32_WEIGHTS)."""
    behind = FP32_WEIGHTS[variant]
    return transferred if behind == REFERENCE else compressed / f"{behind}.pt"


PARETO_AXES = (("bytes", "deployable file (bytes, log scale)", True),
               ("throughput_vs_fp32_onnx", "throughput at the large batch, x fp32_onnx (interleaved)", False))


def load_champion(tracker: ModelRegistry, name: str, folder: Path) -> tuple[Champion | None, Predict | None, str]:
    """The registered champion and a function running its ONNX file; a champion that cannot be loaded or run
    comes back without the function and with the reason (the gate then keeps it)."""
    try:
        champion = tracker.champion(name, folder)
    except Exception as error:  # a damaged or unreachable champion must not stop the stage: the gate keeps it
        log.warning("the champion of %s could not be loaded: %s", name, error)
        return None, None, f"the champion could not be loaded ({error})"
    if champion is None:
        return None, None, ""
    try:
        session = onnx_session(champion.path)
    except Exception as error:
        log.warning("the champion's file %s could not be opened: %s", champion.path, error)
        return champion, None, f"its file could not be opened ({error})"
    return champion, (lambda x: onnx_logits(session, x)), ""


def run(params: Params, *, transferred: Path, compressed: Path, target: Path, table_out: Path,
        confusion_out: Path, pareto_out: Path, predictions_dir: Path,
        tracker: Tracker | None = None) -> dict[str, Any]:
    """Score and time every variant, choose one by the rule, register and gate it; write the table, the
    confusion and Pareto plots and the predictions."""
    tracker = tracker or NullTracker()
    cfg = params.evaluate
    data, digest = load_dataset(target, splits=("train", "val", "test", "pool"))
    tracker.log_dataset("target", target, digest, context="input")
    images, labels_tensor = data["test"].tensors()
    labels = labels_tensor.numpy()
    torch.set_num_threads(TIMING_THREADS)
    found = load_variants(transferred, compressed)
    predicted: dict[str, np.ndarray] = {}
    for name, variant in tqdm(found.items(), desc="evaluate", unit="variant", disable=None, leave=False):
        predicted[name] = variant.predict(images).argmax(1).numpy()
        with atomic_path(predictions_dir / f"{name}.csv") as tmp:
            pd.DataFrame({"actual": labels, "predicted": predicted[name]}).to_csv(tmp, index=False)
    with tempfile.TemporaryDirectory() as folder:
        champion, champion_predict, unscored = load_champion(tracker, cfg.registered_model, Path(folder))
        predictors = {name: variant.predict for name, variant in found.items()}
        if champion_predict is not None:
            predictors[CHAMPION_KEY] = champion_predict
        log.info("timing %d models in %d interleaved rounds", len(predictors), cfg.timing_rounds)
        timings = interleaved_timings(predictors, images, cfg)
        champion_predicted = None if champion_predict is None else champion_predict(images).argmax(1).numpy()
        champion_bytes = None if champion is None else size_report(champion.path)["bytes"]
    results: dict[str, dict[str, float]] = {}
    tests: dict[str, PairedTest] = {}
    for name, variant in found.items():
        scores, tests[name] = scores_with_intervals(labels, predicted[name], predicted[REFERENCE], seed=params.seed)
        results[name] = {**scores, "params": variant.param_count, "nonzero_params": variant.nonzero_param_count,
                         **size_report(variant.path), **speed_columns(timings, name)}
    reference_bytes = state_dict_bytes(found[REFERENCE].model)
    for scores in results.values():
        scores["accuracy_drop_points"] = (results[REFERENCE]["accuracy"] - scores["accuracy"]) * 100
        scores["times_smaller_than_fp32_state_dict"] = reference_bytes / scores["bytes"]
    sizes = {name: int(scores["bytes"]) for name, scores in results.items()}
    if champion_bytes is not None:
        sizes[CHAMPION_KEY] = champion_bytes
    gain = objective_gain(cfg.selection.objective, timings, sizes)
    selection = select(SERVED, tests, {name: results[name]["accuracy"] for name in SERVED}, rule=cfg.selection,
                       gain=gain)
    against_chosen = {name: paired_test(predicted[selection.chosen] == labels, predicted[name] == labels)
                      for name in SERVED}
    dominated = dominated_by(selection.chosen, SERVED, against_chosen, gain=gain)
    for name, scores in results.items():
        log.info("%-15s %s", name, " ".join(f"{k}={v:.4g}" for k, v in scores.items()))
    log.info("selection: %s: %s", selection.chosen, selection.standings[selection.chosen])
    if dominated:
        log.warning("%s is dominated by %s", selection.chosen, ", ".join(dominated))
    table = pd.DataFrame.from_dict(results, orient="index").rename_axis("variant")
    with atomic_path(table_out) as tmp:
        table.to_csv(tmp)
    confusion_grid(confusion_out, {name: confusion_matrix(labels, predicted[name], labels=range(NUM_CLASSES))
                                   for name in found}, {name: r["accuracy"] for name, r in results.items()})
    pareto_plot(pareto_out, table, PARETO_AXES, chosen=selection.chosen)
    for path in (table_out, confusion_out, pareto_out):
        tracker.log_artifact(path, "evaluation")

    def decision_for(version: str) -> GateDecision:
        champion_gain = None if champion_predicted is None else gain(selection.chosen, CHAMPION_KEY)
        return gate_decision(params, champion=champion, unscored=unscored, labels=labels,
                             test_ids=image_ids(data["test"].images), candidate=predicted[selection.chosen],
                             champion_predicted=champion_predicted, gain=champion_gain)

    model_ids = link_scores(params, found, results, selection.chosen, tracker)
    registry = register_chosen(params, selection, model_ids, results, decision_for=decision_for,
                               seen=learnt_from(data), digest=digest,
                               weights=fp32_weights(selection.chosen, transferred=transferred, compressed=compressed),
                               tracker=tracker)
    noise = {"tie_upper_bound_points_at_12_discordant": tie_upper_bound_points(len(labels), 12)}
    return {"test_images": len(labels), "variants": results, "noise": noise,
            "selection": {"chosen": selection.chosen, "rule": selection.rule, "standings": selection.standings,
                          "dominated_by": dominated},
            "registry": registry}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("evaluate", __doc__, run, argv, paths={
        "transferred": "transferred checkpoint (.pt)",
        "compressed": "folder of compressed variants",
        "target": "target dataset (.npz) from ingest",
        "table_out": "per-variant table (.csv) to write",
        "confusion_out": "confusion matrices (.png) to write",
        "pareto_out": "accuracy against size and latency, with the Pareto front (.png) to write",
        "predictions_dir": "folder for per-variant predictions (.csv, for DVC's confusion plot)",
    })


if __name__ == "__main__":
    sys.exit(main())
