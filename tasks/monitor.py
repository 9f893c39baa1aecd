"""monitor: every batch that arrived in the incoming folder, through the model: its predictions, and two drift
tests against the reference (the target test split the champion was evaluated on): Kolmogorov-Smirnov on each
class's softmax output, Bonferroni-corrected, and an MMD permutation test on embeddings. A table per batch
(p-values, decisions, the alarm's reason), a timeline plot, and the series in MLflow; unreadable files are set
aside with their reason and repeated batches counted once."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from groundwork.adaptive.drift import check_batch, model_outputs
from groundwork.adaptive.incoming import read_arrivals
from groundwork.data.atomic import atomic_path
from groundwork.data.datasets import NUM_CLASSES, load_dataset
from groundwork.entrypoint import stage_cli
from groundwork.models.checkpoint import load_model
from groundwork.params import Params
from groundwork.plots import drift_timeline
from groundwork.tracking.runs import NullTracker, RunLog
from groundwork.training.loop import derived_seed

log = logging.getLogger(__name__)
COLUMNS = ("batch", "file", "images", "predicted_classes", "mean_confidence", "ks_p", "ks_class", "mmd", "mmd_p",
           "ks_drift", "mmd_drift", "alarm", "reason")


def run(params: Params, *, model: Path, target: Path, incoming: Path, table_out: Path, plot_out: Path,
        tracker: RunLog | None = None) -> dict[str, Any]:
    """Test every arrived batch; write the table (CSV) and the timeline (PNG); return counts and the latest
    batch's verdict."""
    tracker = tracker or NullTracker()
    cfg = params.adaptive.monitor
    network, _ = load_model(model)
    reference_data, digest = load_dataset(target, splits=("test",))
    tracker.log_dataset("target", target, digest, context="reference")
    reference = model_outputs(network, reference_data["test"].images)
    arrivals = read_arrivals(incoming, params.ingest.target, min_batch=cfg.min_batch)
    for name, reason in arrivals.set_aside.items():
        log.warning("set aside %s: %s", incoming / name, reason)
    for name, first in arrivals.duplicates.items():
        log.info("%s repeats %s: counted once", incoming / name, first)
    rows = []
    for batch in arrivals.batches:
        outputs = model_outputs(network, batch.images)
        result = check_batch(reference, outputs, cfg, seed=derived_seed(params.seed, "monitor", batch.digest))
        predicted = np.bincount(outputs[0].argmax(1), minlength=NUM_CLASSES)
        rows.append({"batch": batch.digest[:12], "file": batch.name, "images": len(batch.images),
                     "predicted_classes": " ".join(map(str, predicted)),
                     "mean_confidence": float(outputs[0].max(1).mean()), **result.as_row()})
        log.info("%s (%s, %d images): %s", batch.name, batch.digest[:12], len(batch.images),
                 "ALARM: " + result.reason if result.alarm else result.reason)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    with atomic_path(table_out) as tmp:
        table.to_csv(tmp, index=False)
    drift_timeline(plot_out, table, alpha=cfg.alpha)
    if rows:
        tracker.log_series({key: table[key].astype(float).tolist()
                            for key in ("ks_p", "mmd_p", "mmd", "alarm", "mean_confidence")})
    for path in (table_out, plot_out):
        tracker.log_artifact(path, "monitor")
    latest = rows[-1] if rows else None
    return {"batches": len(rows), "alarms": int(table["alarm"].sum()) if rows else 0,
            "latest_alarm": bool(latest["alarm"]) if latest else False,
            "latest_reason": latest["reason"] if latest else "no batch has arrived",
            "images": int(table["images"].sum()) if rows else 0,
            "set_aside": arrivals.set_aside, "duplicates": arrivals.duplicates}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("monitor", __doc__, run, argv, paths={
        "model": "the champion's fp32 weights (.pt; models/champion/champion.pt), whose outputs are tested",
        "target": "target dataset (.npz) from ingest: its test split is the reference",
        "incoming": "folder of arrived batches (.npz files, or folders of images)",
        "table_out": "per-batch drift table (.csv) to write",
        "plot_out": "drift timeline (.png) to write",
    })


if __name__ == "__main__":
    sys.exit(main())
