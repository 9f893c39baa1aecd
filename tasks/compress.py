"""compress: from the transferred model, make every compressed variant, each fine-tuned where it helps
(distilled from the fp32 model when params say so), and write each as a file that runs without this project:

  pruned           global magnitude pruning, iterative to the target sparsity (ONNX)
  structured       whole channels and embedding units removed, iteratively (ONNX: a smaller network)
  lowrank          large layers replaced by SVD factor pairs at a rank set by an energy threshold (ONNX)
  int8             static post-training int8 of the fp32 model, calibrated, for ONNX Runtime's int8 kernels
  structured_int8  the structured network in int8
  searched         channels removed to the per-layer widths the search stage chose, iteratively (ONNX)
  searched_int8    the searched network in int8
  packed           the pruned model with shared weights (codebooks fine-tuned), stored sparse and entropy-coded

`variants.json` lists each variant's file, runtime, parameter counts and validation accuracy."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from groundwork.compression.export import (
    MANIFEST,
    calibration_images,
    export_onnx,
    fp32_cells,
    onnx_accuracy,
    parameter_counts,
    quantize_int8,
    size_report,
    state_dict_bytes,
)
from groundwork.compression.names import SERVED
from groundwork.compression.packing import load_packed, pack
from groundwork.compression.pruning import sparsity
from groundwork.compression.variants import TRAINED, train_variant, variant_jobs
from groundwork.data.atomic import atomic_folder, write_json
from groundwork.data.datasets import Split, load_dataset
from groundwork.entrypoint import stage_cli
from groundwork.models.checkpoint import load_model, save_checkpoint
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params
from groundwork.search.policy import read_policy, read_precisions
from groundwork.serving.package import log_served_model, served_contract
from groundwork.tracking.runs import NullTracker, RunLog
from groundwork.training.distributed import resolve_device
from groundwork.training.jobs import run_jobs, worker_count
from groundwork.training.loop import loss_and_accuracy

log = logging.getLogger(__name__)


def _write_variants(params: Params, reference: DigitNet, searched: Any, searched_precisions: list[str],
                    calibration: Any, val: Split, folder: Path,
                    tracker: RunLog, *, transferred: Path, target: Path, device: torch.device
                    ) -> tuple[dict[str, dict[str, Any]], dict[str, DigitNet]]:
    """Every variant's file and the manifest, written into `folder`; the manifest and the fine-tuned models."""
    cfg = params.compress
    checkpoint_params = params.model_dump(mode="json")
    manifest: dict[str, dict[str, Any]] = {}

    def record(name: str, file: str, runtime: str, model: torch.nn.Module, accuracy: float) -> None:
        manifest[name] = {"file": file, "runtime": runtime, **parameter_counts(model), "val_accuracy": accuracy}
        log.info("%-15s val accuracy %.4f, %s", name, accuracy, file)

    export_onnx(reference, folder / "fp32.onnx")
    record("fp32_onnx", "fp32.onnx", "onnx", reference, onnx_accuracy(folder / "fp32.onnx", val))
    quantize_int8(folder / "fp32.onnx", folder / "int8.onnx", calibration, cfg.quantization)
    record("int8", "int8.onnx", "onnx", reference, onnx_accuracy(folder / "int8.onnx", val))

    jobs = variant_jobs(params, transferred=transferred, target=target, searched=searched)
    workers = worker_count(cfg.workers, len(jobs), device)
    log.info("%d variants to fine-tune, in %d process(es)", len(jobs), workers)
    trained: dict[str, DigitNet] = {}
    with tqdm(total=len(jobs), desc="fine-tuned variants", unit="variant", disable=None) as bar:
        for done in run_jobs(train_variant, jobs, workers):
            for metrics, step in done.logged:  # the rounds' accuracies, logged here: workers have no run
                tracker.log_metrics(metrics, step=step)
            trained.update(done.models)
            bar.update()
    for name in TRAINED:
        model = trained[name]
        accuracy = loss_and_accuracy(model, *val.tensors(), device=torch.device("cpu"))["accuracy"]
        save_checkpoint(folder / f"{name}.pt", model, stage="compress", params=checkpoint_params,
                        metrics={"val_accuracy": accuracy})
        export_onnx(model, folder / f"{name}.onnx")
        record(name, f"{name}.onnx", "onnx", model, onnx_accuracy(folder / f"{name}.onnx", val))
    # structured_int8 keeps the ends as compress.quantization says; searched_int8 ships as the policy's precisions
    for name, fp32_layers in (("structured", None), ("searched", fp32_cells(searched_precisions))):
        quantize_int8(folder / f"{name}.onnx", folder / f"{name}_int8.onnx", calibration, cfg.quantization,
                      fp32_layers=fp32_layers)
        record(f"{name}_int8", f"{name}_int8.onnx", "onnx", trained[name],
               onnx_accuracy(folder / f"{name}_int8.onnx", val))
    pack(trained["packed"], folder / "packed.gwpk", bits=cfg.packed_bits)
    unpacked = load_packed(folder / "packed.gwpk")
    record("packed", "packed.gwpk", "packed", unpacked,
           loss_and_accuracy(unpacked, *val.tensors(), device=torch.device("cpu"))["accuracy"])
    write_json(folder / MANIFEST, manifest)
    return manifest, trained


def run(params: Params, *, transferred: Path, target: Path, policy: Path, out_dir: Path,
        tracker: RunLog | None = None) -> dict[str, Any]:
    """Write every variant into `out_dir` with its manifest; return sizes, sparsity and accuracies."""
    tracker = tracker or NullTracker()
    data, digest = load_dataset(target, splits=("train", "val", "test", "pool"))
    tracker.log_dataset("target", target, digest, context="input")
    device = resolve_device(params.device)
    val = data["val"]
    reference, _ = load_model(transferred)
    searched = read_policy(policy, reference.arch)  # before any work: a bad policy file fails at once
    searched_precisions = read_precisions(policy, len(searched.layer_widths()) + 1)
    calibration = calibration_images(data, params.compress.calibration_images)
    with atomic_folder(out_dir) as staging:  # killed or failed mid-way: no part of a new set of variants
        manifest, trained = _write_variants(params, reference, searched, searched_precisions, calibration, val,
                                            staging, tracker,
                                            transferred=transferred, target=target, device=device)

    # every ONNX variant as the classifier a client calls: evaluate scores these models and registers one
    for name in SERVED:
        log_served_model(tracker, out_dir / manifest[name]["file"], name, served_contract(params.ingest.target))
    tracker.log_artifact(out_dir / "packed.gwpk", "packed")
    reference_bytes = state_dict_bytes(reference)
    metrics = {
        "sparsity": round(sparsity(trained["pruned"]), 4),
        "ranks": trained["lowrank"].factorized,
        "structured_widths": list(trained["structured"].arch.layer_widths()),
        "searched_widths": list(trained["searched"].arch.layer_widths()),
        "searched_int8_precisions": searched_precisions,
        "fp32_val_accuracy": loss_and_accuracy(reference, *val.tensors(), device=torch.device("cpu"))["accuracy"],
        "fp32_state_dict_bytes": reference_bytes,
        "packed_times_smaller": round(reference_bytes / size_report(out_dir / "packed.gwpk")["bytes"], 2),
        "variants": manifest,
    }
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("compress", __doc__, run, argv, paths={
        "transferred": "transferred checkpoint (.pt)",
        "target": "target dataset (.npz) from ingest",
        "policy": "per-layer widths (.json) from the search stage, for the searched variant",
        "out_dir": "folder for the compressed variants",
    })


if __name__ == "__main__":
    sys.exit(main())
