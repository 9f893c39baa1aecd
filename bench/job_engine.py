"""What the jobs' engine costs before and around the work, side by side in one run: `run_jobs` (a Dask LocalCluster
of worker processes made for the jobs, groundwork.training.jobs) against a plain `ProcessPoolExecutor` of as many
spawned processes (what the jobs ran on before), each given the same trivial jobs (a job imports torch's state and
returns its process). The training in a job is the same either way; this is the fixed cost a stage pays per fan-out.

Usage: PYTHONPATH=. .venv/bin/python bench/job_engine.py [--rounds 5] [--workers 2] [--jobs 13]
(13 jobs: the default budget sweep's draws)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from groundwork.training.jobs import run_jobs


def trivial(job: int) -> tuple[int, int, int]:
    return job, os.getpid(), torch.get_num_threads()


def plain_pool(jobs: list[int], workers: int) -> list[tuple[int, int, int]]:
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(trivial, jobs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=13)
    args = parser.parse_args()
    jobs = list(range(args.jobs))
    seconds: dict[str, list[float]] = {"Dask LocalCluster (run_jobs)": [], "ProcessPoolExecutor, spawned": []}
    for _ in range(args.rounds):  # interleaved: the machine's noise falls on both alike
        for name, run in (("Dask LocalCluster (run_jobs)", lambda: list(run_jobs(trivial, jobs, args.workers))),
                          ("ProcessPoolExecutor, spawned", lambda: plain_pool(jobs, args.workers))):
            started = time.perf_counter()
            results = run()
            seconds[name].append(time.perf_counter() - started)
            assert [job for job, _, _ in results] == jobs
    print(f"{args.jobs} trivial jobs on {args.workers} worker processes, {args.rounds} interleaved rounds\n")
    print("| engine | median s | min s | max s |\n| --- | --- | --- | --- |")
    for name, values in seconds.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    dask, pool = (statistics.median(values) for values in seconds.values())
    print(f"\nDask against the plain pool: {dask / pool:.2f}x the time ({dask - pool:+.2f} s per fan-out)")


if __name__ == "__main__":
    main()
