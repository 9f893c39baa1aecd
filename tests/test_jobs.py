"""groundwork.training.jobs: independent jobs in worker processes, on a share of torch's threads each."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from groundwork.errors import JobEngineError
from groundwork.project import ROOT
from groundwork.training.jobs import run_jobs, worker_count


def where_it_ran(job: int) -> tuple[int, int, int]:
    """The job, the process that ran it, and that process's torch threads."""
    return job, os.getpid(), torch.get_num_threads()


def fails_on_three(job: int) -> int:
    if job == 3:
        raise ValueError("job 3 cannot be done")
    return job


def records_pid_then_waits(folder: str) -> None:
    Path(folder, str(os.getpid())).touch()
    time.sleep(600)


def malloc_trim_threshold(_: int) -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def logs_a_line(job: int) -> int:
    logging.getLogger("groundwork.training.loop").info("job %d logged", job)
    return os.getpid()


def test_auto_is_one_process_per_thread_on_a_cpu_and_one_on_an_accelerator() -> None:
    threads = torch.get_num_threads()
    assert worker_count("auto", 100, torch.device("cpu")) == threads
    assert worker_count("auto", 100, torch.device("cuda")) == 1
    assert worker_count("auto", 1, torch.device("cpu")) == 1, "never more processes than jobs"
    assert worker_count(4, 2, torch.device("cpu")) == 2
    assert worker_count(3, 10, torch.device("cuda")) == 3, "a number is taken as given"


def test_one_worker_runs_the_jobs_here_on_all_threads() -> None:
    assert list(run_jobs(where_it_ran, [1, 2], 1)) == [(1, os.getpid(), torch.get_num_threads()),
                                                       (2, os.getpid(), torch.get_num_threads())]


@pytest.mark.subprocess
def test_two_workers_run_the_jobs_elsewhere_in_order_on_a_share_of_the_threads() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        results = list(run_jobs(where_it_ran, list(range(6)), 2))
    finally:
        torch.set_num_threads(before)
    assert [job for job, _, _ in results] == list(range(6))
    pids = {pid for _, pid, _ in results}
    assert os.getpid() not in pids and len(pids) <= 2
    assert {threads for _, _, threads in results} == {2}, "4 threads shared by 2 processes"


@pytest.mark.subprocess
def test_local_workers_keep_glibcs_malloc_trim_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dask's default (65536) makes glibc return memory to the kernel after every training step: the budget stage
    spent a third of its CPU faulting it back in (bench/RESULTS.md, *The jobs' engine*)."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # a worker inherits this process's environment
    assert list(run_jobs(malloc_trim_threshold, [0, 1], 2)) == [None, None]


@pytest.mark.subprocess
def test_a_failing_job_fails_the_caller_with_its_own_error() -> None:
    with pytest.raises(ValueError, match="job 3 cannot be done"):
        list(run_jobs(fails_on_three, [1, 2, 3, 4], 2))


@pytest.mark.subprocess
def test_workers_stop_when_the_process_they_work_for_is_killed(tmp_path: Path) -> None:
    script = ("from groundwork.training.jobs import run_jobs\n"
              "from tests.test_jobs import records_pid_then_waits\n"
              f"list(run_jobs(records_pid_then_waits, [{str(tmp_path)!r}] * 2, 2))\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.iterdir())) < 2:
            assert parent.poll() is None and time.monotonic() < deadline, "the workers never started their jobs"
            time.sleep(0.2)
        workers = [psutil.Process(int(path.name)) for path in tmp_path.iterdir()]
        assert all(worker.ppid() == parent.pid for worker in workers)
    finally:
        parent.send_signal(signal.SIGKILL)  # no shutdown of the pool: the workers are left to notice
        parent.wait()
    _, alive = psutil.wait_procs(workers, timeout=30)
    alive = [worker for worker in alive if worker.status() != psutil.STATUS_ZOMBIE]  # exited, not yet reaped
    for worker in alive:
        worker.kill()
    assert not alive, "workers trained on after their parent was gone"


@pytest.mark.subprocess
def test_a_workers_log_lines_reach_stderr_marked_with_its_process(capfd: pytest.CaptureFixture[str]) -> None:
    """Workers log as a stage does (INFO, on stderr: the stage's log, Prefect's), each line marked with its process,
    since the lines of two workers interleave."""
    pids = list(run_jobs(logs_a_line, [0, 1], 2))
    lines = capfd.readouterr().err.splitlines()
    for job, pid in enumerate(pids):
        assert any(f"INFO [worker {pid}] groundwork.training.loop: job {job} logged" in line for line in lines), lines


def dies_the_first_time(folder: str) -> int:
    """Kills its own process unless it has run before (a marker in `folder`): a worker lost mid-job, once."""
    marker = Path(folder, "ran")
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def always_dies(_: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.subprocess
def test_a_job_whose_worker_dies_is_retried_once_on_a_fresh_worker(tmp_path: Path) -> None:
    [pid] = run_jobs(dies_the_first_time, [str(tmp_path)], 2)
    assert (tmp_path / "ran").exists() and pid != os.getpid()


class Named(str):
    """A job whose name (str) differs from its repr, as the stages' jobs do."""


@pytest.mark.subprocess
def test_a_job_whose_worker_dies_twice_fails_the_caller_naming_the_job() -> None:
    with pytest.raises(JobEngineError, match="job 'labels/class 5, draw 2' was lost: the worker process running it "
                                             "died, and died again on the retry"):
        list(run_jobs(always_dies, [Named("labels/class 5, draw 2")], 2))


@pytest.mark.server
def test_jobs_go_to_the_scheduler_that_is_set_and_run_on_its_workers(dask_scheduler: str) -> None:
    import dask

    with dask.config.set({"scheduler-address": dask_scheduler}):
        results = list(run_jobs(where_it_ran, list(range(6)), 1))  # a scheduler set: its workers, whatever the count
    assert [job for job, _, _ in results] == list(range(6))
    pids = {pid for _, pid, _ in results}
    assert os.getpid() not in pids and len(pids) == 2, "both of the cluster's worker processes took jobs"
    assert {threads for _, _, threads in results} == {1}, "the workers keep the threads they were started with"


def test_an_unreachable_scheduler_is_an_error_naming_its_address_before_any_job_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dask

    from groundwork.training import jobs

    monkeypatch.setattr(jobs, "CONNECT_TIMEOUT_S", 2)  # the wait is Dask's; the unit tests need not sit through 10 s

    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{unused.getsockname()[1]}"
    started = time.monotonic()
    with dask.config.set({"scheduler-address": address}), \
            pytest.raises(JobEngineError, match=f"the Dask scheduler at {address} .* did not answer within 2 s"):
        list(run_jobs(records_pid_then_waits, [str(tmp_path)], 2))
    assert time.monotonic() - started < 2 + 10
    assert not list(tmp_path.iterdir()), "no job ran"
