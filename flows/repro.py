"""The DVC side of orchestration: the stage order from DVC's graph, one stage run through `dvc repro`, the graph as
a DVC experiment, and `dvc push` of a run's outputs to the default remote.

What happened to a stage is read from state, never from DVC's log text: the outcome file the stage's entry point
writes (groundwork.tracking.outcome) says it ran, or how it failed; its entry in dvc.lock, compared before and
after, tells outputs restored from DVC's run cache (changed, yet nothing ran) from a stage left as it was."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from groundwork.tracking.outcome import OUTCOME_DIR_ENV, forget_outcome, read_outcome

RAN, SKIPPED, RESTORED = "ran", "skipped", "restored"


class StageFailed(RuntimeError):
    """`dvc repro` of one stage exited non-zero; the message carries the stage's own error lines. `transient`: the
    failure may pass on a retry (the stage said so, or it never ended on its own); False when it will recur."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class PushFailed(RuntimeError):
    """`dvc push` cannot run (no default remote) or exited non-zero."""


@dataclass(frozen=True)
class StageResult:
    """What happened to one stage in one flow run."""

    stage: str
    status: str  # RAN, SKIPPED (unchanged) or RESTORED (outputs checked out from DVC's run cache)
    seconds: float | None  # None inside an experiment, where DVC runs the stages in one command


def _stage_graph(root: Path) -> tuple[list[str], Any]:
    """Every stage of the project as DVC addresses it from `root` (by name in root/dvc.yaml, `<file>:<name>` in
    another: `adaptive/dvc.yaml:monitor`), in the dvc files' order, and DVC's graph over those addresses, whose edges
    point from a stage to the stages it depends on."""
    import networkx as nx
    from dvc.repo import Repo

    def address(stage: Any) -> str:
        graph = Path(stage.dvcfile.path).resolve().relative_to(root.resolve()).as_posix()
        return stage.name if graph == "dvc.yaml" else f"{graph}:{stage.name}"

    with Repo(str(root)) as repo:
        return [address(stage) for stage in repo.index.stages], nx.relabel_nodes(repo.index.graph, address)


def _in_file(address: str, dvc_file: str) -> bool:
    graph, _, _ = address.rpartition(":")
    return (graph or "dvc.yaml") == Path(dvc_file).as_posix()


def stage_order(root: Path, dvc_file: str = "dvc.yaml") -> list[str]:
    """The stages of root/`dvc_file` in an order that runs every stage after those it depends on, as DVC
    addresses them from `root`: by name in root/dvc.yaml, `<file>:<name>` in another (`adaptive/dvc.yaml:monitor`)."""
    return _ordered(*_stage_graph(root), dvc_file)


@dataclass(frozen=True)
class StagePlan:
    """The stages of one dvc file in DVC's order, each with the stages of that file it depends on directly."""

    order: list[str]
    upstream: dict[str, list[str]]


def stage_plan(root: Path, dvc_file: str = "dvc.yaml") -> StagePlan:
    """stage_order's stages with DVC's edges among them, read from DVC's own graph: the flow's tasks wait on them."""
    stages, graph = _stage_graph(root)
    order = _ordered(stages, graph, dvc_file)
    return StagePlan(order, {stage: [dep for dep in order if graph.has_edge(stage, dep)] for stage in order})


def _ordered(stages: list[str], graph: Any, dvc_file: str) -> list[str]:
    import networkx as nx

    position = {stage: index for index, stage in enumerate(stages)}
    # DVC's edges point from a stage to the stages it depends on: reversed, they give the execution order
    ordered = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=position.__getitem__)
    return [stage for stage in ordered if _in_file(stage, dvc_file)]


def stages_to_run(root: Path, env: Mapping[str, str], dvc_file: str = "dvc.yaml") -> list[str]:
    """The stages of `dvc_file`, in DVC's order, that `dvc repro` may run: those `dvc status` finds changed (deps,
    params or outputs) and every stage downstream of one. The others have unchanged inputs all the way up, so
    `dvc repro` would skip them: one DVC call tells, instead of one `dvc repro` per stage. When `dvc status` itself
    fails, every stage (each `dvc repro` then decides, and reports what went wrong)."""
    import networkx as nx

    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", dvc_file], cwd=root, env=dict(env),
                            capture_output=True, text=True)
    stages, graph = _stage_graph(root)
    order = _ordered(stages, graph, dvc_file)
    if result.returncode != 0:
        return order
    changed = set(json.loads(result.stdout or "{}"))
    return [stage for stage in order if stage in changed or changed & nx.descendants(graph, stage)]


def stage_name(address: str) -> str:
    """A stage's own name (what its entry point records its outcome under) from DVC's address of it."""
    return address.rpartition(":")[2]


def lock_hash(root: Path, stage: str) -> str | None:
    """SHA-256 of the stage's entry in its dvc.lock (its command and the hashes of its deps, params and outs)."""
    import yaml

    graph, _, name = stage.rpartition(":")
    lock = root / Path(graph or "dvc.yaml").with_name("dvc.lock")
    try:
        # libyaml's parser where PyYAML has it: read before and after every stage, a default dvc.lock took 83 ms to
        # parse in Python and 10 ms in C
        entry = yaml.load(lock.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["stages"][name]
    except (OSError, KeyError, TypeError):
        return None
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()


def stage_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus `extra`, with this interpreter's bin folder first on PATH, so that
    the `python` in dvc.yaml's commands is the one that runs the flow."""
    env = {**os.environ, **extra}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_experiment(name: str, overrides: Mapping[str, Any], stages: list[str], *, root: Path,
                   env: Mapping[str, str], echo: Callable[[str], None], outcomes: Path) -> list[StageResult]:
    """`dvc exp run --temp -S key=value ...`: the whole graph with changed params, in a temporary copy of the
    workspace, so params.yaml here is never edited; the experiment is kept by DVC under `name`. A stage ran
    when it recorded its outcome in `outcomes`; the others were unchanged or restored from DVC's run cache."""
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "--name", name]
    for key, value in overrides.items():
        command += ["-S", f"{key}={json.dumps(value)}"]  # DVC reads the value as YAML, a superset of JSON
    for stage in stages:
        forget_outcome(outcomes, stage)
    started = time.perf_counter()
    code, lines = _stream(command, root=root, env={**env, OUTCOME_DIR_ENV: str(outcomes)}, echo=echo)
    ended = {stage: outcome for stage in stages if (outcome := read_outcome(outcomes, stage)) is not None}
    if code != 0:
        raise StageFailed(f"experiment '{name}' failed (dvc exp run exited {code}):\n{_tail(lines)}",
                          transient=not any(outcome.kind == "failed" for outcome in ended.values()))
    ran = sorted(stage for stage, outcome in ended.items() if outcome.kind == "ran")
    echo(f"experiment '{name}' done in {time.perf_counter() - started:.1f} s; stages run: {ran or 'none'}")
    return [StageResult(stage=stage, status=RAN if stage in ran else SKIPPED, seconds=None) for stage in stages]


def _tail(lines: list[str]) -> str:
    return "\n".join(line for line in lines[-25:] if line.strip())


def _stream(command: list[str], *, root: Path, env: Mapping[str, str],
            echo: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run a command, echoing its output line by line; return its exit code and its lines."""
    lines: list[str] = []
    with subprocess.Popen(command, cwd=root, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip())
            echo(line.rstrip())
    return process.returncode, lines


def restore_outputs(stage: str, *, root: Path, env: Mapping[str, str], echo: Callable[[str], None]) -> None:
    """Put back the outputs of the stage's last good run (dvc.lock still records them) from DVC's cache.

    DVC deletes a stage's outputs before running it; when the run fails, the previous good outputs would be
    gone from the workspace. A stage that never succeeded has nothing to restore, and that is fine.
    """
    command = [sys.executable, "-m", "dvc", "checkout", "--quiet", stage]
    result = subprocess.run(command, cwd=root, env=dict(env), capture_output=True, text=True)
    echo(f"restored the last good outputs of '{stage}' from DVC's cache" if result.returncode == 0
         else f"no earlier outputs of '{stage}' to restore ({result.stderr.strip() or result.stdout.strip()})")


def repro_stage(stage: str, *, root: Path, env: Mapping[str, str], echo: Callable[[str], None],
                outcomes: Path) -> StageResult:
    """Run `dvc repro --single-item <stage>`, echoing its output line by line; raise StageFailed on error.

    RAN when the stage recorded that it ran (in `outcomes`); RESTORED when it did not, yet its dvc.lock entry
    changed (DVC checked out outputs of the same deps and params from its run cache); SKIPPED otherwise."""
    started = time.perf_counter()
    before = lock_hash(root, stage)
    forget_outcome(outcomes, stage_name(stage))
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    code, lines = _stream(command, root=root, env={**env, OUTCOME_DIR_ENV: str(outcomes)}, echo=echo)
    outcome = read_outcome(outcomes, stage_name(stage))
    if code != 0:
        restore_outputs(stage, root=root, env=env, echo=echo)
        raise StageFailed(f"stage '{stage}' failed (dvc repro exited {code}):\n{_tail(lines)}",
                          transient=outcome is None or outcome.kind == "transient")
    if outcome is not None and outcome.kind == "ran":
        status = RAN
    elif lock_hash(root, stage) != before:
        status = RESTORED  # the same deps and params ran before (e.g. in an experiment): no need to run again
    else:
        status = SKIPPED
    return StageResult(stage=stage, status=status, seconds=time.perf_counter() - started)


def default_remote(root: Path, env: Mapping[str, str]) -> str:
    """The name of the project's default DVC remote (any config level); PushFailed naming the fix when none."""
    result = subprocess.run([sys.executable, "-m", "dvc", "remote", "default"], cwd=root, env=dict(env),
                            capture_output=True, text=True)
    name = result.stdout.strip()
    if result.returncode != 0 or not name:
        raise PushFailed(f"push was asked for, but the DVC project {root} has no default remote. Add one, e.g. "
                         "`dvc remote add -d storage /mnt/shared/groundwork-dvc` (or an s3:// URL), and commit "
                         ".dvc/config")
    return name


def push_outputs(*, root: Path, env: Mapping[str, str], echo: Callable[[str], None]) -> list[str]:
    """`dvc push` to the default remote; returns the paths (outputs, and files inside output folders) it
    uploaded: those `dvc status --cloud` found in the local cache but not in the remote."""
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--cloud", "--json"], cwd=root, env=dict(env),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise PushFailed(f"`dvc status --cloud` exited {result.returncode}:\n{result.stderr.strip()[-2000:]}")
    new = sorted(path for path, state in json.loads(result.stdout or "{}").items() if state == "new")
    code, lines = _stream([sys.executable, "-m", "dvc", "push"], root=root, env=env, echo=echo)
    if code != 0:
        raise PushFailed(f"`dvc push` exited {code}:\n{_tail(lines)}")
    return new
