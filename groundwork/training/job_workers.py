"""What each Dask worker process does as it joins, for groundwork.training.jobs (a module of its own so that a stage
imports Dask only when its jobs fan out)."""

from __future__ import annotations

import os

import torch
from distributed import Worker, WorkerPlugin


class WorkerSetup(WorkerPlugin):
    """Logging as a stage logs (INFO on stderr, each line marked with the process, since two workers' lines
    interleave), no progress bars (the caller reports progress), and on a local cluster its share of torch's
    threads (`threads`; None leaves a cluster's workers as they were started)."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads

    def setup(self, worker: Worker) -> None:
        from groundwork.entrypoint import configure_logging  # a spawned process starts with logging unconfigured

        configure_logging(marker=f"[worker {os.getpid()}] ")
        os.environ["TQDM_DISABLE"] = "1"
        if self.threads is not None:
            torch.set_num_threads(self.threads)
