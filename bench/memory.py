"""Peak memory of the pipeline at the params in params.yaml: every stage forced to run with `dvc repro
--force`, the resident memory of the whole process tree (dvc and the stage it runs) sampled every 50 ms.

Also prints the peak of the single largest process, and the bytes of the datasets as stored (uint8) against
the same images as float32, the format they take only one batch at a time.
Usage: PYTHONPATH=. python bench/memory.py   (from the project root, with the venv's bin on PATH)
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import psutil

from groundwork.data.datasets import load_dataset

GIB = 1024**3


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants, now."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def main() -> None:
    command = [sys.executable, "-m", "dvc", "repro", "--force"]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watched, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, tree_rss(watched))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed with exit code {child.returncode}")
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kilobytes on Linux
    print(f"`dvc repro --force`: {seconds:.0f} s; peak resident memory of the process tree {peak / GIB:.2f} GiB; "
          f"largest single process {largest / GIB:.2f} GiB (budget: 4 GiB)")
    for path, splits in (("data/processed/source.npz", ("train", "val", "test")),
                         ("data/augmented/source_train.npz", ("train",))):
        dataset, _ = load_dataset(path, splits=splits)
        stored = sum(split.images.nbytes for split in dataset.values())
        print(f"{path}: {stored / 2**20:.1f} MiB as uint8; {4 * stored / 2**20:.1f} MiB if held as float32")


if __name__ == "__main__":
    main()
