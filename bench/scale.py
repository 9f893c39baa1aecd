"""How pretraining grows with the source: time and peak memory at 1x, 2x, 4x and 8x the default source training
set, side by side in one run.

The larger sets are the source training images followed by augmented copies of them (the augment stage's
`augmented_copies`, the augment section's magnitudes), so every size holds digits of the same kind. Each size
is pretrained by the pretrain stage's supervised training (`groundwork.training.pretraining`, on the copies, as
`augmentation: offline` does, validating every epoch; the stage's final test scoring and saving are not timed) in
a fresh process, for a fixed number of epochs with the default model, batch size and optimizer, on the CPU;
sizes are interleaved across repeats so all see the same machine load. That process reports the wall and CPU
seconds of loading the data and training, its peak resident memory (getrusage) and what it held just before
(the Python and torch runtime with the training modules imported), so the growth due to the data shows apart
from the runtime's fixed share.

One torch thread by default: on a shared machine, other processes then slow a run in proportion to the CPU
they take, and CPU seconds stay a steady measure; with two threads, OpenMP's spinning made a loaded run
2.5x slower than one thread here. `--threads 2` measures what the pipeline itself uses.
Usage: PYTHONPATH=. .venv/bin/python bench/scale.py [--factors 1 2 4 8] [--epochs 2] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from groundwork.data.corpus import build_datasets
from groundwork.data.datasets import load_dataset, save_dataset
from groundwork.models.digitnet import DigitNet
from groundwork.params import load_params, read_raw_params
from groundwork.training.loop import seed_everything
from groundwork.training.pretraining import pretrain_supervised
from groundwork.training.transforms import augmented_copies

MIB = 2**20


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(params_path: Path, train: Path, source: Path, threads: int) -> None:
    """Pretrain once on `train` (the pretrain stage's supervised training, per-epoch validation included);
    print wall and CPU seconds and memory as one JSON line."""
    torch.set_num_threads(threads)
    params = load_params(params_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    started, cpu_started = time.perf_counter(), cpu_seconds()
    source_set, _ = load_dataset(source)
    copies, _ = load_dataset(train, splits=("train",))
    seed_everything(params.seed)
    pretrain_supervised(DigitNet(params.model), copies["train"], source_set, params, on_epoch=lambda *_: None,
                        resume=None)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "cpu": cpu, "before": before, "peak": peak}))


def prepare(folder: Path, factors: list[int], epochs: int) -> tuple[Path, Path, dict[int, tuple[Path, int]]]:
    """The params file, the source dataset and one training set per factor (path, images), written in `folder`."""
    raw = read_raw_params()
    raw["device"] = "cpu"
    raw["pretrain"] |= {"epochs": epochs, "augmentation": "offline", "objective": "supervised", "nproc": 1,
                        "warmup_epochs": 0, "early_stopping": 0}
    params_path = folder / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(params_path)
    source = folder / "source.npz"
    source_set, _ = build_datasets(params.ingest, params.seed)
    save_dataset(source, source_set)
    train = source_set["train"]
    sets = {}
    for factor in factors:
        grown = augmented_copies(train, params.augment.model_copy(update={"copies": factor - 1}), seed=params.seed)
        path = folder / f"train_{factor}x.npz"
        save_dataset(path, {"train": grown})
        sets[factor] = (path, len(grown))
    return params_path, source, sets


def measure(params_path: Path, source: Path, train: Path, threads: int) -> dict[str, float]:
    """One pretraining in a fresh process: its seconds, memory before training and peak memory."""
    done = subprocess.run([sys.executable, __file__, "--child", str(params_path), str(train), str(source),
                           str(threads)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"pretraining on {train.name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="sizes as multiples of the source training set (the first is the reference)")
    parser.add_argument("--epochs", type=int, default=2, help="pretraining epochs at every size")
    parser.add_argument("--repeats", type=int, default=2, help="runs per size (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each pretraining process")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*map(Path, args.child[:3]), threads=int(args.child[3]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        params_path, source, sets = prepare(folder, args.factors, args.epochs)
        runs: dict[int, list[dict[str, float]]] = {factor: [] for factor in args.factors}
        for _ in range(args.repeats):
            for factor, (train, _) in sets.items():
                runs[factor].append(measure(params_path, source, train, args.threads))
    print(f"torch {torch.__version__}, {args.threads} thread(s) per run, {args.epochs} epochs per size, "
          f"median of {args.repeats} runs per size, sizes interleaved")
    median = {f: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for f, rs in runs.items()}
    spread = {f: (min(r["seconds"] for r in rs), max(r["seconds"] for r in rs)) for f, rs in runs.items()}
    ref = median[args.factors[0]]
    print("| size | training images | wall s (min-max) | wall vs 1x | CPU s | CPU vs 1x | CPU ms per image-epoch "
          "| peak RSS MiB | memory vs 1x | above the runtime MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for factor, (_, images) in sets.items():
        m = median[factor]
        low, high = spread[factor]
        print(f"| {factor}x | {images:,} | {m['seconds']:.1f} ({low:.1f}-{high:.1f}) "
              f"| {m['seconds'] / ref['seconds']:.2f}x | {m['cpu']:.1f} | {m['cpu'] / ref['cpu']:.2f}x "
              f"| {m['cpu'] / (images * args.epochs) * 1e3:.2f} | {m['peak'] / MIB:.0f} "
              f"| {m['peak'] / ref['peak']:.2f}x | {(m['peak'] - m['before']) / MIB:.0f} |")


if __name__ == "__main__":
    main()
