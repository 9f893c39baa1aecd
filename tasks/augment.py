"""augment: materialise an augmented copy of the source training set (rotation, scaling, translation,
brightness and contrast, each with a probability and a magnitude from params) and save a preview grid."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from groundwork.data.datasets import load_dataset, save_dataset
from groundwork.entrypoint import stage_cli
from groundwork.params import Params
from groundwork.plots import image_grid
from groundwork.tracking.runs import NullTracker, RunLog
from groundwork.training.transforms import augmented_copies

log = logging.getLogger(__name__)



def run(params: Params, *, source: Path, out: Path, preview: Path, tracker: RunLog | None = None) -> dict[str, Any]:
    """Augment the source training split, write it and a preview of originals against their copies."""
    tracker = tracker or NullTracker()
    dataset, source_digest = load_dataset(source, splits=("train",))
    train = dataset["train"]
    started = time.perf_counter()
    augmented = augmented_copies(train, params.augment, seed=params.seed)
    seconds = time.perf_counter() - started
    out_digest = save_dataset(out, {"train": augmented})
    shown = params.augment.preview_images
    rows = [train.images[:shown]] + [augmented.images[len(train) * k:len(train) * k + shown]
                                     for k in range(1, params.augment.copies + 1)]
    image_grid(preview, rows, ["original"] + [f"copy {k}" for k in range(1, len(rows))],
               "Source digits and their augmented copies")
    tracker.log_artifact(preview, "plots")
    tracker.log_dataset("source", source, source_digest, context="input")
    tracker.log_dataset("augmented", out, out_digest, context="output")
    changed = float(np.mean(augmented.images[len(train):] != np.tile(train.images, (params.augment.copies, 1, 1))))
    return {
        "images_in": len(train),
        "images_out": len(augmented),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(train) * params.augment.copies / max(seconds, 1e-9)),
        "pixels_changed": round(changed, 4),
        "digest": out_digest,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("augment", __doc__, run, argv, paths={
        "source": "source dataset (.npz) from ingest",
        "out": "augmented training set (.npz) to write",
        "preview": "preview grid (.png) to write",
    })


if __name__ == "__main__":
    sys.exit(main())
