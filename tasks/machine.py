"""machine: this machine's fingerprint (the CPU's model and feature flags, the threads variants are timed on, the
ONNX Runtime release), written every time DVC runs the pipeline (the stage is always_changed). The latency table
depends on it: on another machine or runtime the fingerprint changes and DVC rebuilds the table; here it stays
the same and DVC leaves the table alone."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from groundwork.compression.export import TIMING_THREADS
from groundwork.entrypoint import stage_main, stage_parser
from groundwork.params import Params
from groundwork.search.latency import machine_fingerprint
from groundwork.tracking.runs import RunLog


def run(params: Params, tracker: RunLog) -> dict[str, Any]:
    """The fingerprint, also set as the run's tags (`machine.cpu`, ...) so MLflow shows where the run was timed."""
    fingerprint = machine_fingerprint(TIMING_THREADS)
    tracker.set_tags({f"machine.{key}": str(value) for key, value in fingerprint.items()})
    return fingerprint


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd): the fingerprint is the stage's metrics file."""
    return stage_main("machine", stage_parser("machine", __doc__),
                      lambda params, args, tracker: run(params, tracker), argv)


if __name__ == "__main__":
    sys.exit(main())
