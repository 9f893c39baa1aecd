"""ask: when a batch raised a drift alarm, the images of the alarmed batches worth a person's time: a random
holdout first (it scores challenger and champion on the new distribution without bias), then the most informative
of the rest (entropy, margin or BALD; random as the baseline). Writes a labelling queue a person can work
through: a CSV with an empty `label` column to fill in and save into data/labels/, one PNG per image and a
contact sheet of them all. Images already labelled are never asked for again."""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from groundwork.adaptive.labels import arrivals_and_labels
from groundwork.adaptive.selection import informativeness, pick
from groundwork.data.atomic import atomic_path
from groundwork.entrypoint import stage_cli
from groundwork.models.checkpoint import load_model
from groundwork.params import Params
from groundwork.params.adaptive import AskParams
from groundwork.plots import contact_sheet
from groundwork.tracking.runs import NullTracker, RunLog
from groundwork.training.loop import derived_seed, logits_of

log = logging.getLogger(__name__)
QUEUE_COLUMNS = ("image_id", "label", "purpose", "predicted", "confidence", "score", "file")
SHEET_LIMIT = 100  # images on the contact sheet (each one is also a PNG of its own)


def write_queue(queue_dir: Path, rows: list[dict[str, Any]], images: dict[str, np.ndarray]) -> None:
    """The queue CSV, one PNG per queued image, and the contact sheet."""
    from PIL import Image

    (queue_dir / "images").mkdir(parents=True, exist_ok=True)
    for row in rows:
        with atomic_path(queue_dir / row["file"]) as tmp:
            Image.fromarray(images[row["image_id"]]).save(tmp, format="PNG")
    with atomic_path(queue_dir / "queue.csv") as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(QUEUE_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    shown = rows[:SHEET_LIMIT]
    contact_sheet(queue_dir / "sheet.png", np.stack([images[r["image_id"]] for r in shown])
                  if shown else np.zeros((0, 28, 28), np.uint8),
                  [r["image_id"].replace("-", "\n-", 1) + f"  {r['purpose']}: {r['predicted']}?" for r in shown],
                  f"To label: {len(rows)} image(s) (id, purpose: the model's guess)")


def choose(network: torch.nn.Module, candidates: list[str], images: dict[str, np.ndarray], cfg: AskParams, *,
           holdout_wanted: int, generator: torch.Generator) -> list[dict[str, Any]]:
    """The queue's rows: `holdout_wanted` candidates drawn at random, then the `queue_size` most informative of
    the others, each with the model's guess and confidence."""
    order = torch.randperm(len(candidates), generator=generator).tolist()
    holdout = [candidates[i] for i in order[:holdout_wanted]]
    held_out = set(holdout)
    rest = [image_id for image_id in candidates if image_id not in held_out]
    queued: list[tuple[str, str, float | str]] = [(image_id, "holdout", "") for image_id in holdout]
    if rest:
        scores = informativeness(cfg.strategy, network, torch.from_numpy(np.stack([images[i] for i in rest])),
                                 mc_samples=cfg.mc_samples, generator=generator)
        queued += [(rest[i], "train", round(float(scores[i]), 4)) for i in pick(scores, cfg.queue_size)]
    if not queued:
        return []
    probabilities = logits_of(network, torch.from_numpy(np.stack([images[i] for i, _, _ in queued])),
                              device=torch.device("cpu")).softmax(-1)
    return [{"image_id": image_id, "label": "", "purpose": purpose, "predicted": int(row.argmax()),
             "confidence": round(float(row.max()), 4), "score": score, "file": f"images/{image_id}.png"}
            for (image_id, purpose, score), row in zip(queued, probabilities, strict=True)]


def run(params: Params, *, model: Path, incoming: Path, labels: Path, drift: Path, queue_dir: Path,
        tracker: RunLog | None = None) -> dict[str, Any]:
    """Choose the images to label from the alarmed batches and write the queue; return what was asked and why."""
    tracker = tracker or NullTracker()
    cfg = params.adaptive.ask
    arrivals, known, given = arrivals_and_labels(params, incoming, labels)
    table = pd.read_csv(drift, dtype={"batch": str})
    alarmed = set(table.loc[table["alarm"].astype(bool), "batch"])
    candidates = [image_id for batch in arrivals.batches if batch.digest[:12] in alarmed
                  for image_id in batch.image_ids() if image_id not in given]
    holdout_given = sum(label.purpose == "holdout" for label in given.values())
    rows: list[dict[str, Any]] = []
    if candidates:
        generator = torch.Generator().manual_seed(derived_seed(params.seed, "ask", len(given)))
        rows = choose(load_model(model)[0], candidates, known, cfg, generator=generator,
                      holdout_wanted=max(0, min(cfg.holdout_per_iteration,
                                                             cfg.holdout_size - holdout_given)))
    reason = (f"{len(alarmed)} alarmed batch(es), {len(candidates)} unlabelled image(s) in them" if alarmed
              else "no drift alarm: nothing to ask")
    holdout_queued = sum(r["purpose"] == "holdout" for r in rows)
    log.info("queue: %d image(s) (%d holdout, %d by %s); %s", len(rows), holdout_queued, len(rows) - holdout_queued,
             cfg.strategy, reason)
    write_queue(queue_dir, rows, known)
    tracker.log_artifact(queue_dir / "queue.csv", "ask")
    tracker.log_artifact(queue_dir / "sheet.png", "ask")
    return {"queued": len(rows), "holdout_queued": holdout_queued, "alarmed_batches": len(alarmed),
            "labels_given": len(given), "strategy": cfg.strategy, "reason": reason}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("ask", __doc__, run, argv, paths={
        "model": "the champion's fp32 weights (.pt; models/champion/champion.pt), whose uncertainty picks the images",
        "incoming": "folder of arrived batches",
        "labels": "folder of labels given back (.csv)",
        "drift": "the monitor stage's per-batch table (.csv)",
        "queue_dir": "folder for the labelling queue (queue.csv, images/, sheet.png) to write",
    })


if __name__ == "__main__":
    sys.exit(main())
