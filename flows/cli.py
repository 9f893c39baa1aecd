"""`groundwork`: one command for what a user of the project does, each a subcommand (`groundwork <command> --help`).

Exit codes, the same for every subcommand: 0 done, 1 it ran and failed, 2 bad input (an unknown option, stage or
param), reported in one message before anything starts. Heavy imports (Prefect, MLflow, torch) happen inside the
subcommand that needs them, so `--help` and bad input answer at once.

The command lives with the flows, not in the library: its subcommands start them, and groundwork/ imports
nothing of flows/ or tasks/ (tests/test_layout.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

import yaml

from groundwork import forkserver, supervise
from groundwork.dvc_graph import GRAPH_FILES
from groundwork.params import Params, ParamsError, read_raw_params, with_overrides

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
UI_PORT = 5000
SERVE_PORT = 5001


class BadInput(Exception):
    """Input the command refuses before starting anything; the message says what and why."""


def _overrides(items: Sequence[str]) -> dict[str, object]:
    overrides = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator:
            raise BadInput(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    return overrides


def _checked_params(project: Path, overrides: dict[str, object]) -> Params:
    """The project's params with the overrides, validated as every stage validates them (ParamsError if not)."""
    return with_overrides(read_raw_params(project / "params.yaml"), overrides, source=str(project / "params.yaml"))


def _stages(project: Path) -> dict[str, str]:
    """Every stage of the project's graphs, by name, with its DVC address (`dvc.yaml:pretrain`)."""
    found = {}
    for name in GRAPH_FILES:
        graph = project / name
        if graph.exists():
            for stage in yaml.safe_load(graph.read_text()).get("stages", {}):
                found[stage] = f"{name}:{stage}"
    return found


def _environment() -> dict[str, str]:
    """This process's environment with its own executables first on PATH: dvc.yaml calls `python`, and MLflow's
    model server starts `uvicorn` by name."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def _dvc(project: Path, *args: str, warm: Mapping[str, str] | None = None) -> int:
    """`dvc <args>` in the project, with _environment() and `warm` (a stage server's entries)."""
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project,
                          env={**_environment(), **(warm or {})}).returncode


def run(args: argparse.Namespace) -> int:
    """The whole pipeline through the Prefect flow."""
    overrides = _overrides(args.set)
    _checked_params(args.project_dir, overrides)  # before Prefect's temporary server starts
    from flows.pipeline import pipeline

    state = pipeline(project_dir=str(args.project_dir), overrides=overrides or None, push=args.push,
                     return_state=True)
    return EXIT_OK if state.is_completed() else EXIT_FAILED


def stage(args: argparse.Namespace) -> int:
    """One stage alone through DVC (`dvc repro --single-item`): its inputs must exist, it runs if anything it
    depends on changed, and DVC records it as always."""
    stages = _stages(args.project_dir)
    if args.name not in stages:
        raise BadInput(f"no stage {args.name!r}; the stages are {', '.join(stages)}")
    _checked_params(args.project_dir, {})
    return EXIT_OK if _dvc(args.project_dir, "repro", "--single-item", stages[args.name]) == 0 else EXIT_FAILED


def repro(args: argparse.Namespace) -> int:
    """The pipeline with `dvc repro` (the same stages, cache and dvc.lock as the flow's), its stages started warm."""
    _checked_params(args.project_dir, {})
    from flows.repro import stages_to_run

    # the stages that will run start warm (groundwork.forkserver); with nothing to run, no server is started
    pending = stages_to_run(args.project_dir, _environment())
    with forkserver.running() if pending else nullcontext({}) as warm:
        return EXIT_OK if _dvc(args.project_dir, "repro", "dvc.yaml", warm=warm) == 0 else EXIT_FAILED


def loop(args: argparse.Namespace) -> int:
    """One iteration of the adaptive loop through its Prefect flow (monitor, ask, adapt)."""
    _checked_params(args.project_dir, {})
    from flows.adaptive import adaptive_loop

    state = adaptive_loop(project_dir=str(args.project_dir), return_state=True)
    return EXIT_OK if state.is_completed() else EXIT_FAILED


def simulate(args: argparse.Namespace) -> int:
    """The offline stand-ins: the stream of arriving batches, the annotator who answers the labelling queue."""
    from groundwork.adaptive import simulate as stand_ins

    os.chdir(args.project_dir)  # the stand-ins' folders (data/incoming, data/labels) are the project's
    extra = ["--upto", str(args.upto)] if getattr(args, "upto", None) is not None else []
    return stand_ins.main([args.command, *extra])


def ui(args: argparse.Namespace) -> int:
    """The MLflow UI on the project's tracking store (or MLFLOW_TRACKING_URI's), on this machine only. SIGTERM or
    Ctrl-C stops it and every process it started."""
    from groundwork.tracking.runs import tracking_uri

    store = tracking_uri(args.project_dir.resolve())
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--host", args.host,
               "--port", str(args.port)]
    print(f"MLflow UI: {ui_address(store, args.host, args.port)}", flush=True)
    return _hand_over(command, args.project_dir, without_job_runners())


def ui_address(store: str, host: str, port: int) -> str:
    """The project's experiment in the UI's Model training view (flows.summary.MODEL_TRAINING_VIEW), or the
    UI's front page before any run made the experiment."""
    from mlflow import MlflowClient

    from flows.summary import mlflow_address
    from groundwork.tracking.runs import experiment_name

    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    experiment = MlflowClient(store).get_experiment_by_name(experiment_name()) if store.startswith("sqlite") \
        and Path(store.removeprefix("sqlite:///")).exists() else None
    return base if experiment is None else mlflow_address(store, experiment.experiment_id, ui=base)


def _hand_over(command: list[str], cwd: Path, env: Mapping[str, str]) -> int:
    """Replace this process (same id, same signals) with groundwork.supervise running the server `command`: it
    holds none of what the checks before imported, and stops the server's whole process tree on SIGTERM or
    SIGINT. Returns only if the exec fails."""
    os.chdir(cwd)
    supervised = [sys.executable, "-m", "groundwork.supervise", "--", *command]
    if not supervise.GROUPS:  # Windows: exec starts a new process and ends this one, and the console stops waiting
        return subprocess.call(supervised, env=dict(env))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, supervised, dict(env))
    return EXIT_FAILED


def without_job_runners() -> dict[str, str]:
    """This environment, with MLflow's server job execution off unless it is set: by default `mlflow ui` and
    `mlflow server` start about eight job-runner processes (huey consumers, each importing MLflow) for features
    this project does not use (GenAI jobs, trace roll-ups), which cost CPU on a small machine."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}


def serve(args: argparse.Namespace) -> int:
    """The champion as an HTTP service (MLflow's scoring server, in this environment), on this machine only by
    default. POST /invocations with {"inputs": [...]}: image arrays of any size and range, or PNG / JPEG files in
    base64; each image's class and probabilities come back. GET /ping answers once it is ready. SIGTERM or
    Ctrl-C stops the server and every worker it started. With adaptive.capture.enabled, what it is asked is
    written into data/incoming as batches, for the adaptive loop."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from groundwork.serving.capture import CAPTURE_BATCH_ENV, CAPTURE_DIR_ENV
    from groundwork.tracking.registry import CHAMPION
    from groundwork.tracking.runs import tracking_uri

    store = tracking_uri(args.project_dir.resolve())
    params = _checked_params(args.project_dir, {})
    model = args.model
    if model is None:
        name = params.evaluate.registered_model
        try:
            MlflowClient(store).get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            print(f"groundwork serve: {name} has no {CHAMPION} in {store}: run the pipeline first", file=sys.stderr)
            return EXIT_FAILED
        model = f"models:/{name}@{CHAMPION}"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "--model-uri", model, "--env-manager", "local",
               "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    capture, captured = params.adaptive.capture, {}
    if capture.enabled:  # each server process's model reads these (groundwork.serving.capture)
        incoming = args.project_dir.resolve() / "data" / "incoming"
        captured = {CAPTURE_DIR_ENV: str(incoming), CAPTURE_BATCH_ENV: str(capture.batch_size)}
        print(f"capturing requests into {incoming}, a batch every {capture.batch_size} images", flush=True)
    return _hand_over(command, args.project_dir, {**_environment(), "MLFLOW_TRACKING_URI": store, **captured})


def rollback(args: argparse.Namespace) -> int:
    """Give the `champion` alias back to the version that held it before the current one (the gate records it on
    each version it promotes), with the reason and the time tagged on both versions. Exit 2, saying why, when
    there is no earlier champion. A running `groundwork serve` keeps its model until it is started again."""
    name = _checked_params(args.project_dir, {}).evaluate.registered_model
    from mlflow import MlflowClient

    from groundwork.tracking.registry import NothingToRollBack, roll_back
    from groundwork.tracking.runs import tracking_uri

    store = tracking_uri(args.project_dir.resolve())
    try:
        done = roll_back(MlflowClient(store, registry_uri=store), name, args.reason)
    except NothingToRollBack as exc:
        raise BadInput(f"{exc} (in {store})") from None
    print(f"{name}: champion is version {done.restored} again (was version {done.replaced}); reason: {done.reason}")
    return EXIT_OK


def schedule(args: argparse.Namespace) -> int:
    """Serve a deployment of prefect.yaml from this process: its schedule and event triggers (hourly-adaptive runs
    when `groundwork watch` reports an arrival), one run at a time; Ctrl-C stops. Run it in the project folder:
    the deployment's project_dir is "."."""
    from flows import serve

    # Prefect's runner stops gracefully on SIGTERM once it runs; before that (while the flow is imported and the
    # temporary server starts), Python's default would end the process on the spot and leave that server running
    signal.signal(signal.SIGTERM, _interrupt)
    return serve.main(["--project-dir", str(args.project_dir), "--deployment", args.deployment])


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM taken as Ctrl-C: the process unwinds, and Prefect stops the temporary server it started."""
    raise KeyboardInterrupt


def schema(args: argparse.Namespace) -> int:
    """Write params.schema.json again from the params models (after changing them)."""
    from groundwork import schema as params_schema

    return params_schema.main(["--out", str(args.project_dir / params_schema.SCHEMA_FILE)])


def watch(args: argparse.Namespace) -> int:
    """Watch data/incoming and emit a Prefect event (groundwork.batch.arrived) for each arrival, once the folder
    has been still for --settle seconds: the hourly-adaptive deployment's trigger then runs the loop at once.
    Needs a running Prefect server (PREFECT_API_URL), the one the served loop uses; Ctrl-C stops."""
    from flows import watch as arrivals

    try:
        print(f"events to {arrivals.require_event_server()}", flush=True)
    except arrivals.NoEventServer as exc:
        raise BadInput(str(exc)) from None
    arrivals.watch(args.project_dir.resolve(), interval=args.interval, settle=args.settle)
    return 0


def report(args: argparse.Namespace) -> int:
    """The README's results table: `collect` a finished run's reports (evaluate, transfer, pretrain) into
    docs/results.json with the run's commit, date and CPU, then render it into README.md between its markers;
    `render` the committed file into README.md again; `check` exits 1 when README.md differs from that render."""
    from groundwork import report as results_table

    return results_table.run(args)


def parser() -> argparse.ArgumentParser:
    """The command line: one subparser per command, each with its own --help."""
    top = argparse.ArgumentParser(prog="groundwork", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True, metavar="<command>")

    def command(name: str, handler: Callable[[argparse.Namespace], int], summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=handler.__doc__,
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sub.add_argument("--project-dir", type=Path, default=Path("."), help="the project (holds dvc.yaml)")
        sub.set_defaults(handler=handler)
        return sub

    run_parser = command("run", run, "run the whole pipeline through the Prefect flow")
    run_parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a param (e.g. pretrain.epochs=3); the run becomes a DVC experiment")
    run_parser.add_argument("--push", action="store_true",
                            help="after a successful run, upload data and models to the default DVC remote")
    command("stage", stage, "run one stage through DVC").add_argument("name", help="the stage, e.g. pretrain")
    command("repro", repro, "run the pipeline with `dvc repro`, its stages started warm")
    command("loop", loop, "run one iteration of the adaptive loop through its Prefect flow")
    stream = command("stream", simulate, "write the simulated stream of arriving batches into data/incoming")
    stream.add_argument("--upto", type=int, metavar="K", help="write batches 0..K-1 only (the rest arrive later)")
    command("annotate", simulate, "answer the labelling queue with the simulated stream's labels")
    ui_parser = command("ui", ui, "open the MLflow UI on the project's tracking store")
    ui_parser.add_argument("--host", default="127.0.0.1", help="the address to bind (this machine only by default)")
    ui_parser.add_argument("--port", type=int, default=UI_PORT, help="the port to listen on")
    serve_parser = command("serve", serve, "serve the champion model over HTTP (MLflow's scoring server)")
    serve_parser.add_argument("--model", metavar="URI", help="another model to serve (default: the champion, "
                              "models:/<evaluate.registered_model>@champion)")
    serve_parser.add_argument("--host", default="127.0.0.1", help="the address to bind (this machine only by default)")
    serve_parser.add_argument("--port", type=int, default=SERVE_PORT, help="the port to listen on")
    serve_parser.add_argument("--workers", type=int, default=1, help="server processes answering requests")
    rollback_parser = command("rollback", rollback, "give the champion alias back to the version that held it before")
    rollback_parser.add_argument("--reason", required=True, help="why, recorded on both versions")
    schedule_parser = command("schedule", schedule, "serve a deployment of prefect.yaml on its schedule")
    schedule_parser.add_argument("--deployment", default="nightly", help="nightly (the pipeline) or hourly-adaptive")
    watch_parser = command("watch", watch, "emit a Prefect event when a batch arrives in data/incoming")
    watch_parser.add_argument("--interval", type=float, default=1.0, help="seconds between looks at the folder")
    watch_parser.add_argument("--settle", type=float, default=2.0,
                              help="seconds the folder must stay unchanged before an arrival is reported")
    command("schema", schema, "write params.schema.json from the params models")
    from groundwork.report import add_arguments as report_arguments  # standard library only: --help stays instant

    report_arguments(command("report", report, "write the README's results table from a finished run's reports"))
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run the command, and turn bad input into one message and exit code 2."""
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except (BadInput, ParamsError) as exc:
        print(f"groundwork {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
