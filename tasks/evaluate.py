"""evaluate: every model variant on the target's test split: accuracy, macro precision, recall and F1,
confusion matrices, size on disk and CPU latency; a JSON of metrics, a CSV table and plots."""

from __future__ import annotations

import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from tasks.checkpoint import load_model
from tasks.data import NUM_CLASSES, example_input, load_dataset
from tasks.export import onnx_logits, onnx_session, size_report
from tasks.io import atomic_path
from tasks.params import EvaluateParams, Params
from tasks.plots import confusion_grid
from tasks.stage import stage_cli
from tasks.tracking import NullTracker, Tracker
from tasks.training import logits_of

log = logging.getLogger(__name__)
Predict = Callable[[torch.Tensor], torch.Tensor]  # uint8 images (N, 28, 28) -> logits (N, classes)
TIMING_THREADS = 2  # every variant timed with the same thread budget, the cores of the reference machine


def variants(transferred: Path, compressed: Path) -> dict[str, tuple[Path, Predict]]:
    """Each variant's deployable file and a function that runs it on the CPU."""
    cpu = torch.device("cpu")
    fp32, _ = load_model(transferred)
    pruned, _ = load_model(compressed / "pruned.pt")
    fp32_onnx, int8 = onnx_session(compressed / "fp32.onnx"), onnx_session(compressed / "int8.onnx")
    return {
        "fp32": (transferred, lambda x: logits_of(fp32, x, device=cpu)),
        "pruned": (compressed / "pruned.pt", lambda x: logits_of(pruned, x, device=cpu)),
        "fp32_onnx": (compressed / "fp32.onnx", lambda x: onnx_logits(fp32_onnx, x)),
        "int8": (compressed / "int8.onnx", lambda x: onnx_logits(int8, x)),
    }


def classification_scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-averaged precision, recall and F1."""
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average="macro", zero_division=0)
    return {"accuracy": float(np.mean(labels == predicted)), "precision": float(precision),
            "recall": float(recall), "f1": float(f1)}


def wall_times_ms(predict: Predict, batch: torch.Tensor, *, warmup: int, runs: int) -> list[float]:
    """Milliseconds of `runs` predictions of one batch, after `warmup` untimed ones."""
    for _ in range(warmup):
        predict(batch)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        predict(batch)
        times.append((time.perf_counter() - started) * 1000)
    return times


def speed(predict: Predict, images: torch.Tensor, cfg: EvaluateParams) -> dict[str, float]:
    """Latency of one image (p50, p95) and throughput at a large batch (images/s from the median run)."""
    single = wall_times_ms(predict, images[:1], warmup=cfg.warmup_runs, runs=cfg.latency_runs)
    batch = images[torch.arange(cfg.throughput_batch) % len(images)]  # repeats when the split is smaller
    batched = wall_times_ms(predict, batch, warmup=2, runs=cfg.throughput_runs)
    return {"latency_p50_ms": statistics.median(single), "latency_p95_ms": statistics.quantiles(single, n=20)[18],
            f"throughput_b{cfg.throughput_batch}": cfg.throughput_batch / (statistics.median(batched) / 1000)}


def register_candidate(params: Params, path: Path, scores: dict[str, float], example: np.ndarray,
                       tracker: Tracker) -> dict[str, Any]:
    """Register the candidate variant as a new model version and run the champion gate on it."""
    cfg = params.evaluate
    if path.suffix == ".onnx":
        version = tracker.log_onnx_model(path, "candidate", example, registered_name=cfg.registered_model)
    else:
        version = tracker.log_torch_model(load_model(path)[0], "candidate", example,
                                          registered_name=cfg.registered_model)
    if version is None:  # no tracking (a plain function call): nothing registered, nothing to gate
        return {"registered": False}
    decision = tracker.gate(cfg.registered_model, version, scores, metric=cfg.gate_metric,
                            min_gain=cfg.gate_min_gain)
    assert decision is not None  # a tracker that registers also gates
    log.info("registered %s version %s (%s); gate: %s", cfg.registered_model, version, cfg.candidate,
             decision.reason)
    return {"registered": True, "model": cfg.registered_model, "version": int(version), "variant": cfg.candidate,
            "promoted": decision.promote, "reason": decision.reason, "candidate_score": decision.candidate,
            "champion_score": decision.champion}


def run(params: Params, *, transferred: Path, compressed: Path, target: Path, table_out: Path,
        confusion_out: Path, predictions_dir: Path, tracker: Tracker | None = None) -> dict[str, Any]:
    """Score and time every variant; write the table, the confusion plot and per-variant predictions."""
    tracker = tracker or NullTracker()
    data, digest = load_dataset(target, splits=("test",))
    tracker.log_dataset("target", target, digest, context="input")
    images, labels = data["test"].tensors()
    torch.set_num_threads(TIMING_THREADS)
    results: dict[str, dict[str, float]] = {}
    matrices: dict[str, np.ndarray] = {}
    files = variants(transferred, compressed)
    for name, (path, predict) in files.items():
        predicted = predict(images).argmax(1).numpy()
        results[name] = {**classification_scores(labels.numpy(), predicted), **size_report(path),
                         **speed(predict, images, params.evaluate)}
        matrices[name] = confusion_matrix(labels.numpy(), predicted, labels=range(NUM_CLASSES))
        with atomic_path(predictions_dir / f"{name}.csv") as tmp:
            pd.DataFrame({"actual": labels.numpy(), "predicted": predicted}).to_csv(tmp, index=False)
        log.info("%-9s %s", name, " ".join(f"{k}={v:.4g}" for k, v in results[name].items()))
    table = pd.DataFrame.from_dict(results, orient="index").rename_axis("variant")
    with atomic_path(table_out) as tmp:
        table.to_csv(tmp)
    confusion_grid(confusion_out, matrices, {name: r["accuracy"] for name, r in results.items()})
    for path in (table_out, confusion_out):
        tracker.log_artifact(path, "evaluation")
    candidate = params.evaluate.candidate
    registry = register_candidate(params, files[candidate][0], results[candidate], example_input(data["test"]),
                                  tracker)
    return {"test_images": len(labels), "variants": results, "registry": registry}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("evaluate", __doc__, run, argv, paths={
        "transferred": "transferred checkpoint (.pt)",
        "compressed": "folder of compressed variants",
        "target": "target dataset (.npz) from ingest",
        "table_out": "per-variant table (.csv) to write",
        "confusion_out": "confusion matrices (.png) to write",
        "predictions_dir": "folder for per-variant predictions (.csv, for DVC's confusion plot)",
    })


if __name__ == "__main__":
    sys.exit(main())
