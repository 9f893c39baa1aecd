"""ONNX Runtime's static int8 quantization, configuration by configuration, on the fp32 files of several pipeline
runs (different seeds): the accuracy each int8 file loses against its own fp32 file on the run's test images,
paired (exact McNemar), for the calibration methods (MinMax, Entropy, Percentile), calibration set sizes,
per-channel against per-tensor weights, and the first and last layers kept in fp32.

Each run's fp32.onnx (the transferred model, whose int8 is `int8`) and structured.onnx (whose int8 is
`structured_int8`) are quantized with the stage's own functions (groundwork.compression.export: quantize_int8,
and calibration_images: the training pool, then validation; never the test split).
Cells are cached in --cache, so an interrupted run resumes. Printed: per configuration and model, the mean and
worst loss in points over the runs, and how many runs lose significantly.
Usage: PYTHONPATH=. .venv/bin/python bench/quantization.py --projects DIR [DIR ...] [--cache FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import yaml

from groundwork.compression.export import calibration_images, onnx_logits, onnx_session, quantize_int8
from groundwork.data.datasets import load_dataset
from groundwork.evaluation.statistics import paired_test
from groundwork.params.compression import QuantizationParams

MODELS = {"int8": "fp32.onnx", "structured_int8": "structured.onnx"}
# (method, calibration images, per-channel, first and last layers in fp32)
CONFIGS = [(method, images, True, False) for method in ("minmax", "entropy", "percentile") for images in (256, 1078)]
CONFIGS += [(method, 1078, False, False) for method in ("minmax", "entropy", "percentile")]
CONFIGS += [(method, 1078, True, True) for method in ("minmax", "entropy", "percentile")]


def cell(project: Path, model: str, config: tuple[str, int, bool, bool]) -> dict[str, float]:
    """Quantize one fp32 file of one run with one configuration; its paired loss against that fp32 file."""
    method, images, per_channel, keep_ends = config
    data, _ = load_dataset(project / "data" / "processed" / "target.npz", splits=("val", "test", "pool"))
    fp32_path = project / "models" / "compressed" / MODELS[model]
    test_images, labels = data["test"].tensors()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "int8.onnx"
        quantize_int8(fp32_path, out, calibration_images(data, images),
                      QuantizationParams(method=method, per_channel=per_channel, keep_ends_fp32=keep_ends))
        quantized = onnx_logits(onnx_session(out), test_images).argmax(1).numpy()
    reference = onnx_logits(onnx_session(fp32_path), test_images).argmax(1).numpy()
    test = paired_test(reference == labels.numpy(), quantized == labels.numpy())
    return {"loss_points": test.loss_points, "p_value": test.p_value, "losses": test.losses, "wins": test.wins,
            "fp32_accuracy": float(np.mean(reference == labels.numpy()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=Path, nargs="+", required=True,
                        help="project folders after a pipeline run through compress (one per seed)")
    parser.add_argument("--cache", type=Path, default=Path("bench/.quantization-cache.json"),
                        help="finished cells, so that a rerun resumes (default bench/.quantization-cache.json)")
    args = parser.parse_args()
    cache = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    # read as plain YAML: a run made before a params change still names its seed
    seeds = {project: yaml.safe_load((project / "params.yaml").read_text())["seed"] for project in args.projects}
    for config in CONFIGS:
        for model in MODELS:
            for project in args.projects:
                key = f"{project.resolve()}|{model}|{config}"
                if key not in cache:
                    cache[key] = cell(project, model, config)
                    args.cache.write_text(json.dumps(cache, indent=1))
    print(f"int8 against its own fp32 file on each run's test images (seeds {sorted(seeds.values())}); loss in "
          "points (positive: int8 worse), mean and worst over the runs; significant: exact McNemar p < 0.05")
    print("| method | calibration images | weights | first/last layers | "
          + " | ".join(f"{model}: mean loss | {model}: worst | {model}: significant" for model in MODELS) + " |")
    print("|" + " --- |" * (4 + 3 * len(MODELS)))
    for config in CONFIGS:
        method, images, per_channel, keep_ends = config
        cells = []
        for model in MODELS:
            found = [cache[f"{project.resolve()}|{model}|{config}"] for project in args.projects]
            losses = [entry["loss_points"] for entry in found]
            significant = sum(entry["p_value"] < 0.05 and entry["losses"] > entry["wins"] for entry in found)
            cells += [f"{np.mean(losses):+.2f}", f"{max(losses):+.2f}", f"{significant}/{len(found)}"]
        print(f"| {method} | {images} | {'per channel' if per_channel else 'per tensor'} | "
              f"{'fp32' if keep_ends else 'int8'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
