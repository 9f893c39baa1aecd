"""Shared fixtures: the project's params.yaml shrunk to tiny sizes (groundwork.project's TINY), and the tiny
datasets and models the stages make from them, built once per session for the tests that only read them."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import pytest
from filelock import FileLock

from groundwork import forkserver
from groundwork.params import Params, parse_params
from groundwork.project import ROOT, tiny_params_dict
from tasks import ingest

# `make fuzz` sets it: more cases, each run with a new seed
RANDOM_SEEDS_ENV = "GROUNDWORK_FUZZ_CASES"


def pytest_configure(config: pytest.Config) -> None:
    """Hypothesis keeps its caches in a temporary folder, not in the project (tests write nothing there), and
    draws every property's cases from a fixed seed: CI runs the same cases each time, unless `make fuzz` asks for
    new ones."""
    from hypothesis import settings
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(tempfile.mkdtemp(prefix="groundwork-hypothesis-"))
    settings.register_profile("fixed-seed", derandomize=True, database=None)
    if RANDOM_SEEDS_ENV not in os.environ:
        settings.load_profile("fixed-seed")
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        _share_the_cores()  # in each test process, not in the controller of xdist's workers


def _share_the_cores() -> None:
    """This test process, and every process it starts, computes on its share of the cores (OMP_NUM_THREADS, unless
    set already): under `make test`'s two workers, two OpenMP pools of two threads each on two cores spin-wait on
    each other, and a test that trains took 30 s beside a busy neighbour where it took 9 s on one thread (4.4 s
    alone)."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end modules first, the rest in their usual order: under `make test`'s parallel workers (xdist,
    one module per worker at a time) the longest modules start at once instead of being left for last."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


STARTS_STAGES = ("e2e", "server", "subprocess", "torchrun")  # the markers of tests that start stage processes


@pytest.fixture(scope="session")
def warm_stages() -> Iterator[None]:
    """One stage server per test process (groundwork.forkserver): every `python -m tasks.<stage>` the tests start,
    directly or through DVC and the flows, is forked from it instead of importing torch and MLflow again. Tests
    that need a cold stage process remove GROUNDWORK_STAGE_SERVER from its environment."""
    with forkserver.running() as warm, pytest.MonkeyPatch.context() as patch:
        for name, value in warm.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="module", autouse=True)
def warm_stages_for_modules_that_start_them(request: pytest.FixtureRequest) -> None:
    """The stage server, started before a module's own fixtures (a module-scoped project run) when any of its tests
    starts stage processes; a run of unit tests alone starts none."""
    if any(item.get_closest_marker(marker) for item in request.session.items if item.module is request.module
           for marker in STARTS_STAGES):
        request.getfixturevalue("warm_stages")


Built = TypeVar("Built")


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Built]) -> Built:
    """`build(folder)`'s result, built by the first test process of the session that asks for it, under a file lock,
    and read back by the others: `make test`'s workers share one tiny train-and-compress chain and one migrated
    Prefect database instead of each building its own. `build` writes only into `folder`; its result is pickled."""
    # under xdist each worker has its own base folder, all in one folder of this session
    shared = factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else factory.getbasetemp()
    folder, result = shared / f"shared-{name}", shared / f"shared-{name}.pickle"
    with FileLock(shared / f"shared-{name}.lock"):
        if not result.exists():  # a build that failed left no result: the next process to ask builds again
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            written = result.with_suffix(".tmp")
            written.write_bytes(pickle.dumps(build(folder)))
            written.replace(result)
        return pickle.loads(result.read_bytes())


def _migrated_prefect_database(folder: Path) -> Path:
    """An empty Prefect server database with every migration applied, as `prefect server database upgrade` does."""
    database = folder / "prefect-test.db"
    env = {**os.environ, "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{database}"}
    subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], env=env, check=True,
                   capture_output=True)
    return database


@pytest.fixture(scope="session")
def prefect_test_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Prefect test server (prefect_test_harness) per test process, for every module that runs flows or deploys
    them, started on a copy of a database migrated once for the session: a start took 22 CPU-seconds, 9 of them
    migrating, and each module used to start its own."""
    from prefect.testing import utilities
    from prefect.testing.utilities import prefect_test_harness

    template = built_once(tmp_path_factory, "prefect-database", _migrated_prefect_database)
    with ExitStack() as stack:
        with pytest.MonkeyPatch.context() as while_starting:
            # the harness puts its database in a folder it makes with mkdtemp: the copy is made there instead
            copy = tmp_path_factory.mktemp("prefect-server")
            shutil.copy2(template, copy / template.name)
            while_starting.setattr(utilities, "mkdtemp", lambda: str(copy))
            stack.enter_context(prefect_test_harness(server_startup_timeout=60))
        yield


@pytest.fixture(scope="session")
def tiny_params() -> Params:
    """Validated tiny params."""
    return parse_params(tiny_params_dict())


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params) -> dict[str, Path]:
    """Source and target datasets written by the ingest stage with tiny params."""

    def build(folder: Path) -> dict[str, Path]:
        paths = {"source": folder / "source.npz", "target": folder / "target.npz"}
        ingest.run(tiny_params, source_out=paths["source"], target_out=paths["target"])
        return paths

    return built_once(tmp_path_factory, "data", build)


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params,
                    tiny_data: dict[str, Path]) -> dict[str, Any]:
    """augment then pretrain on the tiny source: the checkpoint, history and metrics."""

    def build(folder: Path) -> dict[str, Any]:
        from tasks import augment, pretrain

        augment.run(tiny_params, source=tiny_data["source"], out=folder / "aug.npz", preview=folder / "preview.png")
        paths = {"model": folder / "pretrained.pt", "history": folder / "history.csv"}
        metrics = pretrain.run(tiny_params, train=folder / "aug.npz", source=tiny_data["source"],
                               model_out=paths["model"], history_out=paths["history"])
        return {**paths, "metrics": metrics}

    return built_once(tmp_path_factory, "pretrain", build)


@pytest.fixture(scope="session")
def tiny_transferred(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params, tiny_data: dict[str, Path],
                     tiny_pretrained: dict[str, Any]) -> dict[str, Any]:
    """transfer on the tiny target: the checkpoint, history and metrics."""

    def build(folder: Path) -> dict[str, Any]:
        from tasks import transfer

        paths = {"model": folder / "transfer.pt", "history": folder / "history.csv"}
        metrics = transfer.run(tiny_params, pretrained=tiny_pretrained["model"], target=tiny_data["target"],
                               model_out=paths["model"], history_out=paths["history"])
        return {**paths, "metrics": metrics}

    return built_once(tmp_path_factory, "transfer", build)


def _measure_latency(params: Params, folder: Path) -> dict[str, Any]:
    """The machine and latency stages' work for `params` in `folder`: the fingerprint, the table and its metrics."""
    from groundwork.data.atomic import write_json
    from groundwork.tracking.runs import NullTracker
    from tasks import latency, machine

    paths = {"machine": folder / "machine.json", "table": folder / "latency.csv"}
    write_json(paths["machine"], machine.run(params, NullTracker()))
    return {**paths, "metrics": latency.run(params, machine=paths["machine"], table_out=paths["table"])}


@pytest.fixture(scope="session")
def measure_latency() -> Callable[[Params, Path], dict[str, Any]]:
    """What the machine and latency stages write for given params into a folder (the fingerprint, the table)."""
    return _measure_latency


@pytest.fixture(scope="session")
def tiny_latency(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params) -> dict[str, Any]:
    """The latency table of the tiny model's width grid on this machine, with the fingerprint and metrics."""
    return built_once(tmp_path_factory, "latency", lambda folder: _measure_latency(tiny_params, folder))


@pytest.fixture(scope="session")
def tiny_searched(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params, tiny_data: dict[str, Path],
                  tiny_transferred: dict[str, Any], tiny_latency: dict[str, Any]) -> dict[str, Any]:
    """search per-layer widths for the tiny transferred model: the policy, table, plot and metrics."""

    def build(folder: Path) -> dict[str, Any]:
        from tasks import search

        paths = {"policy": folder / "policy.json", "table": folder / "search.csv", "plot": folder / "search.png"}
        metrics = search.run(tiny_params, transferred=tiny_transferred["model"], target=tiny_data["target"],
                             latency=tiny_latency["table"], policy_out=paths["policy"], table_out=paths["table"],
                             plot_out=paths["plot"])
        return {**paths, "latency": tiny_latency["table"], "metrics": metrics}

    return built_once(tmp_path_factory, "search", build)


@pytest.fixture(scope="session")
def tiny_compressed(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params, tiny_data: dict[str, Path],
                    tiny_transferred: dict[str, Any], tiny_searched: dict[str, Any]) -> dict[str, Any]:
    """compress the tiny transferred model: the output folder and metrics."""

    def build(folder: Path) -> dict[str, Any]:
        from tasks import compress

        metrics = compress.run(tiny_params, transferred=tiny_transferred["model"], target=tiny_data["target"],
                               policy=tiny_searched["policy"], out_dir=folder)
        return {"dir": folder, "metrics": metrics, "policy": tiny_searched["policy"]}

    return built_once(tmp_path_factory, "compressed", build)


@pytest.fixture(scope="session")
def dask_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Dask cluster on localhost, as a user would start one: `dask scheduler`, and `dask worker` with two
    worker processes of one thread each; yields the scheduler's address. The scheduler and workers unpickle the
    tests' job functions (modules of tests/, imported by pytest as top-level modules), so both folders are on
    their path."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "DASK_LOGGING__DISTRIBUTED": "warning"}
    dask = [sys.executable, "-m", "dask"]
    with (folder / "scheduler.log").open("w") as log_file:
        scheduler = subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                      "--scheduler-file", str(scheduler_file)], cwd=ROOT, env=env, stdout=log_file,
                                     stderr=subprocess.STDOUT)
        workers = subprocess.Popen([*dask, "worker", "--scheduler-file", str(scheduler_file), "--nworkers", "2",
                                    "--nthreads", "1", "--no-dashboard"], cwd=ROOT, env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    try:
        with Client(scheduler_file=str(scheduler_file), timeout=120) as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
        yield address
    finally:
        for process in (workers, scheduler):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
