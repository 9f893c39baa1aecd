"""The evaluate stage run several times on the same files of one pipeline run, as DVC runs it (its command, in a
process of its own), into a scratch MLflow store: how much each variant's interleaved throughput ratio to
fp32_onnx moves between runs, which variant the rule chose each time, whether anything dominated it, and what
the gate decided (the first run has no champion; each later one meets the first's choice as the champion, on the
same images, so a promotion there would be noise).

Printed: per variant, its accuracy with the 95% interval and its paired test against fp32, then its throughput
ratio in each run with the relative spread across runs ((max - min) / mean); then per run the chosen variant,
the variants that dominate it, and the gate's decision.
Usage: PYTHONPATH=. .venv/bin/python bench/selection.py --project DIR [--runs 3] [--params FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from groundwork.project import ROOT


def evaluate_once(project: Path, params: Path, scratch: Path, index: int) -> dict:
    """One run of the evaluate stage's command on the project's files; its metrics JSON."""
    out = scratch / f"run{index}"
    out.mkdir()
    command = [sys.executable, "-m", "tasks.evaluate", "--params", str(params),
               "--transferred", str(project / "models" / "transfer.pt"),
               "--compressed", str(project / "models" / "compressed"),
               "--target", str(project / "data" / "processed" / "target.npz"),
               "--table-out", str(out / "evaluate.csv"), "--confusion-out", str(out / "confusion.png"),
               "--pareto-out", str(out / "pareto.png"), "--predictions-dir", str(out / "predictions"),
               "--metrics", str(out / "evaluate.json")]
    environment = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}",
                   "PYTHONPATH": str(ROOT)}
    subprocess.run(command, cwd=scratch, env=environment, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return json.loads((out / "evaluate.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="a project folder after a pipeline run")
    parser.add_argument("--runs", type=int, default=3, help="evaluate runs (default 3)")
    parser.add_argument("--params", type=Path, help="params file (default: the project's params.yaml)")
    args = parser.parse_args()
    params = (args.params or args.project / "params.yaml").resolve()
    with tempfile.TemporaryDirectory() as folder:
        runs = [evaluate_once(args.project.resolve(), params, Path(folder), index) for index in range(args.runs)]
    first = runs[0]["variants"]
    print(f"{args.project}: {runs[0]['test_images']} test images; noise: a tie on 12 discordant images may lose up "
          f"to {runs[0]['noise']['tie_upper_bound_points_at_12_discordant']:.2f} points (one-sided 95%)")
    print("| variant | accuracy [95% CI] | vs fp32: lost, won, p | loss upper bound (points) | "
          + " | ".join(f"throughput x fp32_onnx, run {i + 1}" for i in range(args.runs)) + " | spread across runs |")
    print("|" + " --- |" * (5 + args.runs))
    for name, scores in first.items():
        ratios = [run["variants"][name]["throughput_vs_fp32_onnx"] for run in runs]
        intervals = [f"{run['variants'][name]['throughput_vs_fp32_onnx']:.2f} "
                     f"[{run['variants'][name]['throughput_vs_fp32_onnx_low']:.2f}, "
                     f"{run['variants'][name]['throughput_vs_fp32_onnx_high']:.2f}]" for run in runs]
        spread = (max(ratios) - min(ratios)) / (sum(ratios) / len(ratios))
        print(f"| {name} | {scores['accuracy']:.2%} [{scores['accuracy_low']:.2%}, {scores['accuracy_high']:.2%}] | "
              f"{scores['vs_fp32_losses']}, {scores['vs_fp32_wins']}, {scores['vs_fp32_p_value']:.3g} | "
              f"{scores['vs_fp32_loss_upper_points']:.2f} | " + " | ".join(intervals) + f" | {spread:.1%} |")
    for index, run in enumerate(runs):
        selection, registry = run["selection"], run["registry"]
        print(f"run {index + 1}: chose {selection['chosen']} ({selection['standings'][selection['chosen']]}); "
              f"dominated by: {', '.join(selection['dominated_by']) or 'nothing'}; gate: {registry.get('reason')}")


if __name__ == "__main__":
    main()
