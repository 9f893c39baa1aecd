"""ONNX export, side by side in one run: the TorchScript exporter the compress and adapt stages use
(`groundwork.compression.export.export_onnx`) against torch.export's exporter (`torch.onnx.export(dynamo=True)`,
torch's default since 2.9, which the stages used before), on every architecture at params.yaml's sizes.

For each: the first export (in the cnn row, the first of that exporter in the process: what a stage process pays
once), the median of the next `--runs`, and the largest difference between the file's logits (ONNX Runtime) and
PyTorch's on the same images.
Usage: PYTHONPATH=. .venv/bin/python bench/export.py [--runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from groundwork.compression.export import INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_session
from groundwork.models.digitnet import DigitNet
from groundwork.params.training import ModelParams
from groundwork.project import project_params_dict

ARCHITECTURES = ("cnn", "mlp", "lenet5")


def export_with_torch_export(model: torch.nn.Module, path: Path) -> None:
    """The baseline: torch.export's exporter, batch size dynamic, as the stages called it before."""
    model = model.eval().cpu().to(memory_format=torch.contiguous_format)
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, (torch.zeros(2, 1, 28, 28),), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamo=True,
                          dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, external_data=False)


def timings(export: Callable[[torch.nn.Module, Path], None], model: torch.nn.Module, path: Path,
            runs: int) -> tuple[float, float]:
    """Seconds of the first export and the median of the next `runs`."""
    times = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        export(model, path)
        times.append(time.perf_counter() - started)
    return times[0], statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed exports per exporter and architecture")
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.rand(64, 1, 28, 28)
    ways = {"trace (ours)": export_onnx, "torch.export": export_with_torch_export}
    print(f"{'architecture':12s} {'exporter':14s} {'first s':>8s} {'median s':>9s} {'max |logit diff|':>17s}")
    with tempfile.TemporaryDirectory() as folder:
        for arch in ARCHITECTURES:
            model = DigitNet(ModelParams(**{**project_params_dict()["model"], "arch": arch})).eval()
            with torch.no_grad():
                expected = model(images).numpy()
            medians = {}
            for name, export in ways.items():
                path = Path(folder) / f"{arch}-{name.split()[0]}.onnx"
                first, medians[name] = timings(export, model, path, args.runs)
                logits = onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
                print(f"{arch:12s} {name:14s} {first:8.2f} {medians[name]:9.3f} "
                      f"{np.abs(logits - expected).max():17.2e}")
            print(f"{arch:12s} ratio torch.export / trace (median): "
                  f"{medians['torch.export'] / medians['trace (ours)']:.0f}x")


if __name__ == "__main__":
    main()
