"""Independent training jobs fanned out on Dask distributed: worker processes on this machine, each on its share of
torch's threads, or the workers of a Dask cluster when a scheduler address is set.

Why workers at all: the project's models are small, and one of them does not keep two CPU threads fully busy (a
draw of the budget sweep took 61.8 s on one thread, 46.8 s on two: `bench/budget_draw.py`), so two such models
trained at once, a thread each, finish sooner than one after the other on both threads (four draws: 1.22x,
`bench/budget_workers.py`). Why Dask: when one machine is not enough, the same jobs go to a cluster by setting
Dask's own `scheduler-address` (the environment variable DASK_SCHEDULER_ADDRESS, or Dask's config files); nothing
else changes. On an accelerator with no scheduler set, the jobs stay in this process, one after the other: they would
queue for the one device anyway.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal, TypeVar

import torch

from groundwork.errors import JobEngineError

if TYPE_CHECKING:
    from distributed import Client

Job = TypeVar("Job")
Result = TypeVar("Result")
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"  # Dask's own name for its `scheduler-address` setting
CONNECT_TIMEOUT_S = 10  # an address that answers nothing within this is reported, not waited on for Dask's 30 s
# A job whose worker process dies is given to another worker once; a second death fails the stage naming the job.
# (For a cluster of one's own, the scheduler's `distributed.scheduler.allowed-failures` decides it.)
RETRIES_AFTER_WORKER_DEATH = 1

log = logging.getLogger(__name__)


def worker_count(setting: int | Literal["auto"], jobs: int, device: torch.device) -> int:
    """How many processes run `jobs` jobs: `setting`, or for "auto" one per torch thread on a CPU (one on an
    accelerator); never more than there are jobs."""
    if setting == "auto":
        setting = torch.get_num_threads() if device.type == "cpu" else 1
    return max(1, min(setting, jobs))


def scheduler_address() -> str | None:
    """The Dask scheduler the jobs go to, if one is set (DASK_SCHEDULER_ADDRESS, or Dask's config files). The
    variable is read here, not only through Dask's config: that is collected when dask is first imported, which in
    a stage forked from a warm server (groundwork.forkserver) may have been before the command's environment."""
    import dask

    address = os.environ.get(SCHEDULER_ENV) or dask.config.get("scheduler-address", None)
    return str(address) if address else None


def run_jobs(function: Callable[[Job], Result], jobs: Sequence[Job], workers: int) -> Iterator[Result]:
    """`function` of each job, in the jobs' order. With a scheduler address set, on that cluster's workers; else
    with one worker here, one job after the other; with more, on a local cluster of that many fresh processes, each
    computing on torch's threads divided among them (at least one). `function` and the jobs must be picklable (a
    module-level function and plain data); `str(job)` names a job in errors. A job's own error is raised here as it
    was raised there, with a note naming the job."""
    address = scheduler_address()
    if address is None and workers <= 1:
        yield from map(function, jobs)
        return
    from distributed import KilledWorker

    with _client(address, workers) as client:
        futures = [client.submit(function, job, key=f"{getattr(function, '__name__', 'job')}-{index}", pure=False)
                   for index, job in enumerate(jobs)]
        for job, future in zip(jobs, futures, strict=True):
            try:
                yield future.result()
            except KilledWorker as error:
                raise JobEngineError(f"job '{job}' was lost: the worker process running it died, and died again on "
                                     "the retry (killed, or out of memory?)") from error
            except Exception as error:
                error.add_note(f"in job '{job}'")
                raise


@contextmanager
def _client(address: str | None, workers: int) -> Iterator[Client]:
    """A Dask client of the cluster at `address`, or of a local cluster of `workers` processes made for these jobs
    and closed after them (on any exit: a failed job cancels the rest)."""
    import dask
    from distributed import Client, LocalCluster

    from groundwork.training.job_workers import WorkerSetup  # imports distributed: only where jobs fan out

    if address is not None:
        try:
            client = Client(address, timeout=CONNECT_TIMEOUT_S)
        except OSError as error:
            raise JobEngineError(f"the Dask scheduler at {address} ({SCHEDULER_ENV} or Dask's config "
                                 f"'scheduler-address') did not answer within {CONNECT_TIMEOUT_S} s: {error}"
                                 ) from error
        log.info("jobs go to the Dask scheduler at %s (%d workers)", address, len(client.scheduler_info()["workers"]))
        with client:
            client.register_plugin(WorkerSetup(threads=None))
            yield client
        return
    threads = max(1, torch.get_num_threads() // workers)
    # spawned processes (Dask's default), not forked: a fork of a process whose OpenMP pool has run is unsafe with
    # GNU OpenMP. A worker process exits when this one dies, killed or not: Dask's process wrapper watches its
    # parent (tests/test_jobs.py kills the parent with SIGKILL)
    # Dask sets MALLOC_TRIM_THRESHOLD_=65536 in its workers (to report memory promptly): glibc then hands freed
    # memory back to the kernel after every training step and faults it in again on the next, a page at a time.
    # The budget stage took 85 million page faults and 95 s of system time that way, against 5 s with glibc's own
    # threshold (bench/RESULTS.md, *The jobs' engine*): its workers keep glibc's default.
    with dask.config.set({"distributed.scheduler.allowed-failures": RETRIES_AFTER_WORKER_DEATH,
                          "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address="127.0.0.1:0",  # its HTTP server on a free port: 8787 may be taken
                         silence_logs=logging.WARNING, env={"OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
                         ) as cluster, Client(cluster) as client:
        client.register_plugin(WorkerSetup(threads=threads))
        yield client

