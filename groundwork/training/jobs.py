"""Independent training jobs spread over worker processes, each process on its share of torch's threads.

Why: the project's models are small, and one of them does not keep two CPU threads fully busy (a draw of the budget
sweep took 61.8 s on one thread, 46.8 s on two: `bench/budget_draw.py`), so two such models trained at once, a
thread each, finish sooner than one after the other on both threads (four draws: 1.22x, `bench/budget_workers.py`).
On an accelerator the jobs stay in this process, one after the other: they would queue for the one device anyway.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Literal, TypeVar

import torch

Job = TypeVar("Job")
Result = TypeVar("Result")
PARENT_POLL_S = 1.0  # how soon a worker notices that the process it works for is gone


def worker_count(setting: int | Literal["auto"], jobs: int, device: torch.device) -> int:
    """How many processes run `jobs` jobs: `setting`, or for "auto" one per torch thread on a CPU (one on an
    accelerator); never more than there are jobs."""
    if setting == "auto":
        setting = torch.get_num_threads() if device.type == "cpu" else 1
    return max(1, min(setting, jobs))


def run_jobs(function: Callable[[Job], Result], jobs: Sequence[Job], workers: int) -> Iterator[Result]:
    """`function` of each job, in the jobs' order. With one worker, here, one job after the other; with more, in
    that many fresh processes, each computing on torch's threads divided among them (at least one). `function`
    and the jobs must be picklable (a module-level function and plain data)."""
    if workers <= 1:
        yield from map(function, jobs)
        return
    threads = max(1, torch.get_num_threads() // workers)
    # spawned, not forked: a fork of a process whose OpenMP pool has run is unsafe with GNU OpenMP
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                             initargs=(threads, os.getpid())) as pool:
        yield from pool.map(function, jobs)


def _start_worker(threads: int, parent: int) -> None:
    from groundwork.entrypoint import configure_logging  # a spawned process starts with logging unconfigured

    configure_logging(marker=f"[worker {os.getpid()}] ")  # its epochs on the stage's stderr, as in one process
    torch.set_num_threads(threads)
    os.environ["TQDM_DISABLE"] = "1"  # the parent reports progress: bars of several processes would interleave
    threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()


def _exit_without(parent: int) -> None:
    """A worker whose parent is gone (killed, so the pool never shut down) stops instead of training on for no
    one. Polled, not a parent-death signal: that is Linux only, and fires when the thread that started the worker
    ends, not the process."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)
