"""The compress stage's fine-tuned variants made in one process against the same variants made in worker processes
(`compress.workers`), side by side in one run: seconds, the ratio, and each variant's validation accuracy after its
last fine-tune, both ways.

One process fine-tunes each variant on all of torch's threads; workers share them (two workers on two threads: a
thread each), so the arithmetic differs and accuracies move within noise, not by a fixed rule. The jobs are the
stage's own (groundwork.compression.variants), on a project's outputs after a run (models/transfer.pt,
models/search_policy.json, data/processed/target.npz), at its params unless --rounds or --epochs say otherwise.
Usage: PYTHONPATH=. .venv/bin/python bench/compress_workers.py --project DIR [--rounds N] [--epochs N]
       [--workers auto]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from groundwork.compression.variants import TrainedVariant, train_variant, variant_jobs
from groundwork.models.checkpoint import load_model
from groundwork.params import load_params
from groundwork.search.policy import read_policy
from groundwork.training.distributed import resolve_device
from groundwork.training.jobs import run_jobs, worker_count


def last_accuracies(results: list[TrainedVariant]) -> dict[str, float]:
    """Each variant's validation accuracy after its last fine-tune, from the metrics its job logged."""
    accuracies: dict[str, float] = {}
    for result in results:
        for metrics, _round in result.logged:
            # keys variants.<name>.round_val_accuracy (groundwork.tracking.metric_names)
            accuracies.update({key.split(".")[1]: value for key, value in metrics.items()})
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="a project folder after a pipeline run")
    parser.add_argument("--rounds", type=int, help="compress.prune_iterations (default: the project's)")
    parser.add_argument("--epochs", type=int, help="compress.finetune.epochs (default: the project's)")
    parser.add_argument("--workers", default="auto", help="worker processes of the second run (default auto)")
    args = parser.parse_args()
    params = load_params(args.project / "params.yaml")
    cfg = params.compress
    finetune = cfg.finetune.model_copy(update={"epochs": args.epochs or cfg.finetune.epochs})
    cfg = cfg.model_copy(update={"prune_iterations": args.rounds or cfg.prune_iterations, "finetune": finetune})
    params = params.model_copy(update={"compress": cfg})
    transferred = args.project / "models" / "transfer.pt"
    searched = read_policy(args.project / "models" / "search_policy.json", load_model(transferred)[0].arch)
    jobs = variant_jobs(params, transferred=transferred, target=args.project / "data" / "processed" / "target.npz",
                        searched=searched)
    setting = args.workers if args.workers == "auto" else int(args.workers)
    workers = worker_count(setting, len(jobs), resolve_device(params.device))
    print(f"{len(jobs)} jobs, {cfg.prune_iterations} pruning rounds of {finetune.epochs} epochs; torch threads "
          f"{torch.get_num_threads()}; second run: {workers} worker processes, "
          f"{max(1, torch.get_num_threads() // workers)} thread(s) each")
    seconds, accuracies = {}, {}
    for name, count in (("one process", 1), ("workers", workers)):
        started = time.perf_counter()
        accuracies[name] = last_accuracies(list(run_jobs(train_variant, jobs, count)))
        seconds[name] = time.perf_counter() - started
        print(f"  {name:12s} {seconds[name]:7.1f} s", flush=True)
    print(f"  workers against one process: {seconds['one process'] / seconds['workers']:.2f}x faster")
    print("validation accuracy after the last fine-tune (%), one process / workers:")
    for variant, accuracy in accuracies["one process"].items():
        print(f"  {variant:11s} {100 * accuracy:6.2f} / {100 * accuracies['workers'][variant]:6.2f}")


if __name__ == "__main__":
    main()
