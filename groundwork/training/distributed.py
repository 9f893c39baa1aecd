"""Training in several processes: relaunching a stage under torchrun, and who this process is once there.

A stage whose params ask for `nproc` > 1 runs itself again under torchrun (`torch.distributed.run`), so the DVC
command stays `python -m tasks.<stage> ...`. Each process torchrun starts joins one process group (gloo on
the CPU, NCCL on CUDA, one GPU per local rank); the training loop then wraps the model in
DistributedDataParallel and gives every rank its share of each epoch. Rank 0 alone validates, writes
outputs and talks to MLflow. Outside torchrun every helper here answers as a single process would.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from groundwork.forkserver import SERVER_ENV, STARTED_WARM_ENV

log = logging.getLogger(__name__)

# Set by torchrun in every process it starts; their absence means this process was started by hand (or DVC).
TORCHRUN_ENV = ("LOCAL_RANK", "WORLD_SIZE")
# How long a rank may wait for the others (rank 0 validating, saving, logging models to MLflow) before failing.
GROUP_TIMEOUT = timedelta(minutes=30)

def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; 'cuda' without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA device is available")
    return torch.device(name)


def under_torchrun() -> bool:
    """Whether this process is one of the workers torchrun started."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def relaunch(module: str, nproc: int, argv: Sequence[str]) -> int:
    """Run `python -m <module> <argv>` in `nproc` processes under torchrun; return torchrun's exit code.

    A SIGTERM to this process (a cancelled flow run, a killed `dvc repro`) is passed on, so no worker outlives it.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", module, *argv]
    log.info("starting %d processes: %s", nproc, " ".join(command))
    # the ranks start cold, each its own process: torchrun watches and signals them by pid
    child = subprocess.Popen(command, env={k: v for k, v in os.environ.items()
                                           if k not in (SERVER_ENV, STARTED_WARM_ENV)})
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def world_size() -> int:
    """Processes training together: 1 unless a process group is up."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the group: 0 when training alone."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Whether this process is the one that validates, writes outputs and records to MLflow."""
    return rank() == 0


def _exit_on_terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join torchrun's process group for the duration (a no-op outside torchrun); on CUDA, pin this process to
    the GPU of its local rank. On a clean exit every rank waits at a barrier, so none leaves while rank 0 is
    still writing."""
    if not under_torchrun():
        yield
        return
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local_rank} has no GPU: nproc is above the {torch.cuda.device_count()} "
                               "CUDA devices of this machine")
        torch.cuda.set_device(local_rank)
    # When one worker dies, torchrun stops the others with SIGTERM, whose default action ends a process on the
    # spot: raised as SystemExit instead, it unwinds the stage, so rank 0 closes its MLflow run as FAILED.
    signal.signal(signal.SIGTERM, _exit_on_terminate)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=GROUP_TIMEOUT,
                            device_id=torch.device("cuda", local_rank) if device.type == "cuda" else None)
    log.info("rank %d of %d joined the %s process group", rank(), world_size(), backend)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` wrapped in DistributedDataParallel (gradients averaged across ranks at every step) when several
    processes train together, else `model` itself. The wrapper shares the model's parameters: evaluate and
    save the model, not the wrapper."""
    if world_size() == 1:
        return model
    return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (what the others pass is ignored); `value` itself when training alone."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sums of `values` across ranks; `values` unchanged when training alone."""
    if world_size() == 1:
        return list(values)
    # NCCL reduces only tensors on the GPU; gloo only on the CPU: the training device suits both
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()
