"""compress: prune the transferred model (global magnitude pruning, iterative, with fine-tuning between
rounds) and quantize it to int8 (static post-training quantization, calibrated, run by ONNX Runtime's int8
kernels); report sparsity, sizes and the accuracy each variant keeps on the target's validation split."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.checkpoint import load_model, save_checkpoint
from tasks.data import Dataset, example_input, load_dataset, to_float
from tasks.export import export_onnx, onnx_logits, onnx_session, quantize_int8, size_report
from tasks.model import DigitNet
from tasks.params import CompressParams, Params
from tasks.pruning import make_permanent, prune_to, sparsity
from tasks.stage import stage_cli
from tasks.tracking import NullTracker, Tracker
from tasks.training import evaluate, fit, resolve_device, validation

log = logging.getLogger(__name__)


def prune_iteratively(model: DigitNet, data: Dataset, cfg: CompressParams, *, seed: int, device: torch.device,
                      tracker: Tracker) -> DigitNet:
    """Raise sparsity in equal steps to the target, fine-tuning on the target's labels after each step."""
    for step in range(1, cfg.prune_iterations + 1):
        prune_to(model, cfg.sparsity * step / cfg.prune_iterations)
        history = fit(model, data["train"].tensors(), cfg.finetune, device=device, seed=seed + step,
                      validate=validation(*data["val"].tensors(), device=device),
                      desc=f"prune {step}/{cfg.prune_iterations}")
        tracker.log_metrics({"prune_sparsity": sparsity(model), "prune_val_accuracy": history[-1]["val_accuracy"]},
                            step=step)
    make_permanent(model)
    return model


def calibration_images(data: Dataset, count: int) -> np.ndarray:
    """Unlabelled target images (train, then val) in the models' input format, for int8 calibration."""
    images = torch.cat([data["train"].tensors()[0], data["val"].tensors()[0]])[:count]
    return to_float(images).numpy()


def run(params: Params, *, transferred: Path, target: Path, out_dir: Path,
        tracker: Tracker | None = None) -> dict[str, Any]:
    """Write pruned.pt, fp32.onnx and int8.onnx into `out_dir`; return sparsity, sizes and accuracies."""
    tracker = tracker or NullTracker()
    data, digest = load_dataset(target)
    tracker.log_dataset("target", target, digest, context="input")
    device = resolve_device(params.device)
    val = data["val"].tensors()

    reference, _ = load_model(transferred)
    reference_accuracy = evaluate(reference, *val, device=device)["accuracy"]
    pruned, _ = load_model(transferred)
    prune_iteratively(pruned, data, params.compress, seed=params.seed, device=device, tracker=tracker)
    pruned_accuracy = evaluate(pruned, *val, device=device)["accuracy"]
    pruned.cpu()
    pruned_path = out_dir / "pruned.pt"
    save_checkpoint(pruned_path, pruned, stage="compress", params=params.model_dump(mode="json"),
                    metrics={"val_accuracy": pruned_accuracy, "sparsity": sparsity(pruned)})

    fp32_onnx, int8_onnx = out_dir / "fp32.onnx", out_dir / "int8.onnx"
    export_onnx(reference, fp32_onnx)
    quantize_int8(fp32_onnx, int8_onnx, calibration_images(data, params.compress.calibration_images))
    int8_logits = onnx_logits(onnx_session(int8_onnx), val[0])
    int8_accuracy = float((int8_logits.argmax(1) == val[1]).float().mean())

    example = example_input(data["test"])
    tracker.log_torch_model(pruned, "pruned", example)
    tracker.log_onnx_model(int8_onnx, "int8", example)
    metrics = {
        "sparsity": round(sparsity(pruned), 4),
        "val_accuracy": {"fp32": reference_accuracy, "pruned": pruned_accuracy, "int8": int8_accuracy},
        "size": {"fp32_checkpoint": size_report(transferred), "pruned_checkpoint": size_report(pruned_path),
                 "fp32_onnx": size_report(fp32_onnx), "int8_onnx": size_report(int8_onnx)},
    }
    log.info("sparsity %.3f; val accuracy fp32 %.4f, pruned %.4f, int8 %.4f", metrics["sparsity"],
             reference_accuracy, pruned_accuracy, int8_accuracy)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("compress", __doc__, run, argv, paths={
        "transferred": "transferred checkpoint (.pt)",
        "target": "target dataset (.npz) from ingest",
        "out_dir": "folder for the compressed variants",
    })


if __name__ == "__main__":
    sys.exit(main())
