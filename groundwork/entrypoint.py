"""The thin entry point every stage shares: arguments, logging, params validation, tracking, metrics file."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from groundwork.data.atomic import write_json
from groundwork.dvc_graph import declared_params, graph_file
from groundwork.errors import CheckpointError, DataError, JobEngineError, OutputNotWritten, TrainingDiverged
from groundwork.params import DEFAULT_PARAMS_PATH, Params, ParamsError, load_params
from groundwork.tracking.outcome import Kind, Outcome, record_outcome
from groundwork.tracking.runs import NullTracker, Tracker, stage_run, tracking_uri
from groundwork.training.distributed import is_main_process, process_group, relaunch, resolve_device, under_torchrun
from groundwork.training.precision import precision_used

log = logging.getLogger(__name__)

# Failures with a clear cause: reported in one line, no traceback. Exit code 2 marks bad params (nothing ran);
# 1 a stage that started and failed, and will fail again on the same inputs; 75 (EX_TEMPFAIL in sysexits.h) a
# failure whose cause may pass, such as a tracking server that is down: only that one is worth a retry.
EXPECTED_FAILURES = (DataError, CheckpointError, TrainingDiverged, OutputNotWritten, JobEngineError, FileNotFoundError,
                     ValueError)
EXIT_BAD_PARAMS = 2
EXIT_FAILED = 1
EXIT_TRANSIENT = 75
LOG_LEVEL_ENV = "GROUNDWORK_LOG_LEVEL"  # the stages' log level: INFO by default, DEBUG adds e.g. every budget epoch
TRANSIENT_FAILURES = (MlflowException, ConnectionError, TimeoutError)

StageWork = Callable[[Params, argparse.Namespace, Tracker], dict[str, Any]]
StageRun = Callable[..., dict[str, Any]]  # a stage's run(params, *, <paths>..., tracker)
Processes = Callable[[Params], int]  # how many training processes a stage's params ask for


def stage_parser(stage: str, description: str | None) -> argparse.ArgumentParser:
    """A parser with the options every stage takes; the stage adds its input and output paths."""
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}", description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH, help="params file to validate and use")
    parser.add_argument("--metrics", type=Path, required=True, metavar="PATH", default=argparse.SUPPRESS,
                        help="where to write the stage's metrics (JSON, declared under `metrics:` in dvc.yaml)")
    return parser


# Third-party warnings a stage drops, each with its reason; every other Python warning is logged at WARNING.
SILENCED_WARNINGS = {
    # MLflow, whenever a process defines the served classifier (groundwork/serving/classifier.py): predict's input
    # is unannotated on purpose, since MLflow would enforce a hint as a schema and refuse the files, arrays and
    # tables the classifier accepts and checks itself. MLflow wraps that check in its own "once" filter, which
    # overrides warnings.filterwarnings, so the warning is dropped here, as a log record.
    "Add type hints to the `predict` method",
}


class _SilencedWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in SILENCED_WARNINGS)


SILENCER = _SilencedWarnings()  # one instance: configuring twice adds it once


def configure_logging(marker: str = "") -> None:
    """Log lines with time and module on stderr, after `marker` where one is given (a worker process's, so that
    the lines of processes logging at once can be told apart); the libraries' chatter kept to warnings."""
    level = os.environ.get(LOG_LEVEL_ENV, "INFO").upper()
    logging.basicConfig(level=level if level in logging.getLevelNamesMapping() else logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {marker}%(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Dask's loggers are set up from its config when distributed is imported, overriding levels set here: its
    # scheduler and nannies would log every start and stop at INFO (this process's and its workers', which inherit it)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.captureWarnings(True)  # Python warnings as log records: a level, and SILENCED_WARNINGS applied
    logging.getLogger("py.warnings").addFilter(SILENCER)
    if not sys.stderr.isatty():  # relayed into a log (DVC's, the flow's): each refresh of a bar would be a line
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def stage_cli(stage: str, description: str | None, run: StageRun, argv: Sequence[str] | None, *,
              paths: Mapping[str, str], options: Mapping[str, tuple[Path, str]] | None = None,
              processes: Processes | None = None) -> int:
    """A stage's command line: `--<path>` for each of `paths` (name: help) and `options` (name: (default,
    help)), passed to `run(params, **paths, tracker=...)` by name; returns the exit code. `processes`: see
    stage_main."""
    parser = stage_parser(stage, description)
    for name, help_text in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, required=True, metavar="PATH",
                            default=argparse.SUPPRESS, help=help_text)  # required: no "(default: None)"
    for name, (default, help_text) in (options or {}).items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, default=default, metavar="PATH",
                            help=help_text)
    names = [*paths, *(options or {})]

    def work(params: Params, args: argparse.Namespace, tracker: Tracker) -> dict[str, Any]:
        return run(params, **{name: getattr(args, name) for name in names}, tracker=tracker)

    return stage_main(stage, parser, work, argv, processes=processes)


def stage_main(stage: str, parser: argparse.ArgumentParser, work: StageWork,
               argv: Sequence[str] | None = None, *, processes: Processes | None = None) -> int:
    """Validate params, run the stage inside its MLflow run, write and log its metrics; return an exit code.

    A stage that names its `processes` trains in that many when the params ask for more than one: started
    plainly (by hand, by DVC), the command runs itself again under torchrun and returns torchrun's exit code;
    under torchrun, every rank does the work and rank 0 alone opens the MLflow run and writes the metrics.
    """
    args = parser.parse_args(argv)
    configure_logging()
    try:
        params = load_params(args.params)
    except ParamsError as exc:
        print(f"{stage}: {exc}", file=sys.stderr)
        return _ended(stage, "failed", EXIT_BAD_PARAMS, str(exc))
    if processes is not None and not under_torchrun() and (count := processes(params)) > 1:
        return relaunch(f"tasks.{stage}", count, sys.argv[1:] if argv is None else argv)
    try:
        with process_group(resolve_device(params.device)) if processes is not None else nullcontext():
            if is_main_process():
                _record(stage, params, args, work)
            else:
                logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports progress for all
                work(params, args, NullTracker())
                return 0
    except EXPECTED_FAILURES as exc:
        log.error("%s failed: %s", stage, exc)
        return _ended(stage, "failed", EXIT_FAILED, str(exc))
    except TRANSIENT_FAILURES as exc:
        # DVC records a stage only when it succeeds: failing here keeps outputs and tracking in step
        detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        message = (f"MLflow tracking at {tracking_uri()} is unreachable or refused the request ({detail})"
                   if isinstance(exc, MlflowException) else f"{type(exc).__name__}: {detail}")
        log.error("%s failed: %s", stage, message)
        return _ended(stage, "transient", EXIT_TRANSIENT, message)
    except Exception as exc:  # a bug: recorded as a failure that will recur, then shown with its traceback
        _ended(stage, "failed", EXIT_FAILED, repr(exc))
        raise
    log.info("%s done; metrics in %s", stage, args.metrics)
    return _ended(stage, "ran", 0)


def _ended(stage: str, kind: Kind, exit_code: int, message: str = "") -> int:
    """Record how the stage ended for the flow that started it (rank 0 only, under torchrun); return the code."""
    if int(os.environ.get("RANK", "0")) == 0:
        record_outcome(Outcome(stage=stage, kind=kind, exit_code=exit_code, message=message))
    return exit_code


def _record(stage: str, params: Params, args: argparse.Namespace, work: StageWork) -> None:
    dvc_file = graph_file(stage, Path(args.params).parent)  # the graph beside the params file declares what it reads
    declared = declared_params(stage, params, dvc_file)
    used = {}
    if "precision" in declared:  # a stage that trains: the arithmetic `precision` gave on this device
        used = {"training_precision": precision_used(params.precision, resolve_device(params.device))}
    with stage_run(stage, declared | used, params.tracking) as tracker:
        metrics = work(params, args, tracker) | used
        write_json(args.metrics, metrics)
        tracker.log_metrics_json(metrics)
        tracker.log_artifact(args.metrics)
