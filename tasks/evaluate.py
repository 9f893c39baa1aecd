"""evaluate: every model variant on the target's test split: accuracy, macro precision, recall and F1,
parameters (all and non-zero), bytes of the deployable file (raw and compressed), latency at batch 1 and
throughput at a large batch with two threads, each against the fp32 model; a JSON of metrics, a CSV table,
confusion matrices and a Pareto plot of accuracy against size and latency."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from tqdm.auto import tqdm

from groundwork.card import (
    SCORE_COLUMNS,
    lineage,
    registered_model_description,
    training_data,
    version_card,
)
from groundwork.compression.export import size_report, state_dict_bytes
from groundwork.compression.names import FP32_RUNTIMES, REFERENCE, SERVED
from groundwork.data.atomic import atomic_path
from groundwork.data.datasets import NUM_CLASSES, load_dataset
from groundwork.entrypoint import stage_cli
from groundwork.evaluation.timing import TIMING_THREADS, speed
from groundwork.evaluation.variants import Variant, load_variants
from groundwork.params import Params
from groundwork.plots import confusion_grid, pareto_plot
from groundwork.serving.package import find_served_model, log_served_model, served_contract
from groundwork.tracking.runs import NullTracker, Tracker

log = logging.getLogger(__name__)


def classification_scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-averaged precision, recall and F1."""
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average="macro", zero_division=0)
    return {"accuracy": float(np.mean(labels == predicted)), "precision": float(precision),
            "recall": float(recall), "f1": float(f1)}


def link_scores(params: Params, found: dict[str, Variant], results: dict[str, dict[str, float]],
                tracker: Tracker) -> dict[str, str]:
    """Each served variant's logged model (the one compress logged, found by its file's digest) with its own
    scores linked to it and to the target data; return variant -> model id. A candidate the store holds no model
    of (compress ran without tracking, or against another store) is logged here instead."""
    model_ids: dict[str, str] = {}
    for name in SERVED:
        model_id = find_served_model(tracker, found[name].path)
        if model_id is None and name == params.evaluate.candidate:
            model_id = log_served_model(tracker, found[name].path, name, served_contract(params.ingest.target))
            if model_id is not None:
                log.warning("no logged model of %s in the tracking store: logged it in this run", found[name].path)
        if model_id is not None:
            tracker.log_model_metrics(model_id, results[name], dataset="target")
            model_ids[name] = model_id
    return model_ids


def register_candidate(params: Params, model_ids: dict[str, str], results: dict[str, dict[str, float]],
                       digest: str, tracker: Tracker) -> dict[str, Any]:
    """Register the candidate variant's logged model as a new model version, run the champion gate on it, and
    give the version its card (every variant's scores, the decision, lineage)."""
    cfg = params.evaluate
    scores = results[cfg.candidate]
    version = None if cfg.candidate not in model_ids else tracker.register_model(model_ids[cfg.candidate],
                                                                                 cfg.registered_model)
    if version is None:  # no tracking (a plain function call): nothing registered, nothing to gate
        return {"registered": False}
    decision = tracker.gate(cfg.registered_model, version, scores, metric=cfg.gate_metric,
                            min_gain=cfg.gate_min_gain, dataset="target")
    assert decision is not None  # a tracker that registers also gates
    card = version_card(title=f"{cfg.registered_model} version {version}: the `{cfg.candidate}` variant",
                        params=params, trained_on=training_data(params, {"target": digest}), scores=results,
                        columns=SCORE_COLUMNS, registered=cfg.candidate, decision=decision,
                        lineage=lineage(Path.cwd(), ("transfer", "compress")))
    tracker.describe(cfg.registered_model, version, registered_model_description(params), card)
    log.info("registered %s version %s (%s); gate: %s", cfg.registered_model, version, cfg.candidate,
             decision.reason)
    return {"registered": True, "model": cfg.registered_model, "version": int(version), "variant": cfg.candidate,
            "model_id": model_ids[cfg.candidate], "promoted": decision.promote, "reason": decision.reason,
            "candidate_score": decision.candidate, "champion_score": decision.champion}


PARETO_AXES = (("bytes", "deployable file (bytes, log scale)", True),
               ("latency_p50_ms", "latency at batch 1, p50 (ms)", False))


def against_fp32(results: dict[str, dict[str, float]], throughput_key: str, state_dict_bytes: int) -> None:
    """Add each variant's accuracy drop (points), its speed-up over the fastest fp32 runtime at the large batch
    and how many times smaller its file is than the fp32 state dict."""
    reference = results[REFERENCE]["accuracy"]
    fastest = max(results[name][throughput_key] for name in FP32_RUNTIMES if name in results)
    for scores in results.values():
        scores["accuracy_drop_points"] = (reference - scores["accuracy"]) * 100
        scores["speedup_vs_fastest_fp32"] = scores[throughput_key] / fastest
        scores["times_smaller_than_fp32_state_dict"] = state_dict_bytes / scores["bytes"]


def run(params: Params, *, transferred: Path, compressed: Path, target: Path, table_out: Path,
        confusion_out: Path, pareto_out: Path, predictions_dir: Path,
        tracker: Tracker | None = None) -> dict[str, Any]:
    """Score and time every variant; write the table, the confusion and Pareto plots and the predictions."""
    tracker = tracker or NullTracker()
    data, digest = load_dataset(target, splits=("test",))
    tracker.log_dataset("target", target, digest, context="input")
    images, labels = data["test"].tensors()
    torch.set_num_threads(TIMING_THREADS)
    results: dict[str, dict[str, float]] = {}
    matrices: dict[str, np.ndarray] = {}
    found = load_variants(transferred, compressed)
    for name, variant in tqdm(found.items(), desc="evaluate", unit="variant", disable=None, leave=False):
        predicted = variant.predict(images).argmax(1).numpy()
        results[name] = {**classification_scores(labels.numpy(), predicted),
                         "params": variant.param_count, "nonzero_params": variant.nonzero_param_count,
                         **size_report(variant.path), **speed(variant.predict, images, params.evaluate)}
        matrices[name] = confusion_matrix(labels.numpy(), predicted, labels=range(NUM_CLASSES))
        with atomic_path(predictions_dir / f"{name}.csv") as tmp:
            pd.DataFrame({"actual": labels.numpy(), "predicted": predicted}).to_csv(tmp, index=False)
    against_fp32(results, f"throughput_b{params.evaluate.throughput_batch}",
                 state_dict_bytes(found[REFERENCE].model))
    for name, scores in results.items():
        log.info("%-15s %s", name, " ".join(f"{k}={v:.4g}" for k, v in scores.items()))
    table = pd.DataFrame.from_dict(results, orient="index").rename_axis("variant")
    with atomic_path(table_out) as tmp:
        table.to_csv(tmp)
    confusion_grid(confusion_out, matrices, {name: r["accuracy"] for name, r in results.items()})
    pareto_plot(pareto_out, table, PARETO_AXES)
    for path in (table_out, confusion_out, pareto_out):
        tracker.log_artifact(path, "evaluation")
    registry = register_candidate(params, link_scores(params, found, results, tracker), results, digest, tracker)
    return {"test_images": len(labels), "variants": results, "registry": registry}


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
