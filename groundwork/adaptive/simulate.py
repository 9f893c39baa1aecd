"""The offline stand-ins for production: a stream of arriving batches written from the embedded target data, and
an annotator who answers the labelling queue with the true labels.

The stream's images are target images the champion was neither trained nor tested on: the target's training
pool without its labelled images (transfer saw them only unlabelled, through FixMatch). Batch i is drawn with
its own seed, so writing batches 0-2 today and 0-5 tomorrow gives the same first three. The true labels go to
a folder of their own (`data/stream_truth/`), which the loop never reads; only the simulated annotator does.

    python -m groundwork.adaptive.simulate stream [--upto K]   # batches 0..K-1 into data/incoming/
    python -m groundwork.adaptive.simulate annotate            # answer the queue into data/labels/
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from groundwork.adaptive.incoming import ID_DIGITS, batch_digest
from groundwork.adaptive.shifts import apply_shift, class_prior_weights
from groundwork.data.atomic import atomic_path
from groundwork.data.datasets import Split, load_dataset
from groundwork.errors import DataError
from groundwork.params import DEFAULT_PARAMS_PATH, Params, ParamsError, load_params
from groundwork.params.adaptive import StreamParams
from groundwork.training.loop import derived_seed

log = logging.getLogger(__name__)
INCOMING_DIR = Path("data/incoming")
TRUTH_DIR = Path("data/stream_truth")
LABELS_DIR = Path("data/labels")
QUEUE_FILE = Path("reports/adaptive/queue/queue.csv")


def unseen_images(target: Path) -> Split:
    """The target pool without the labelled training images: images whose labels the champion never saw."""
    data, _ = load_dataset(target, splits=("train", "pool"))
    labelled = {image.tobytes() for image in data["train"].images}
    keep = np.array([image.tobytes() not in labelled for image in data["pool"].images])
    return Split(data["pool"].images[keep], data["pool"].labels[keep])


def draw_window(unseen: Split, cfg: StreamParams, index: int, seed: int) -> Split:
    """Batch `index` of the stream: `window_size` images drawn without replacement, shifted from batch
    `shifted_from` on."""
    rng = np.random.default_rng(derived_seed(seed, "stream", index))
    shifted = index >= cfg.shifted_from and cfg.shift != "none"
    weights = class_prior_weights(unseen.labels, cfg.strength) if shifted and cfg.shift == "class_prior" else None
    count = min(cfg.window_size, len(unseen))
    chosen = rng.choice(len(unseen), size=count, replace=False, p=weights)
    images = torch.from_numpy(unseen.images[chosen])
    if shifted:
        images = apply_shift(cfg.shift, cfg.strength, images, torch.Generator().manual_seed(int(rng.integers(2**31))))
    return Split(images.numpy(), unseen.labels[chosen])


def write_stream(params: Params, *, target: Path, incoming: Path, truth: Path, upto: int | None = None) -> list[Path]:
    """Write batches 0..upto-1 (default: all `windows`) as `stream-<i>.npz` holding `images`, with their true
    labels in `truth`; return the batch files written (those already there with the same images are kept)."""
    cfg = params.adaptive.stream
    unseen = unseen_images(target)
    written = []
    for index in range(min(upto if upto is not None else cfg.windows, cfg.windows)):
        window = draw_window(unseen, cfg, index, params.seed)
        path = incoming / f"stream-{index:03d}.npz"
        digest = batch_digest(window.images)
        with atomic_path(truth / f"{digest[:ID_DIGITS]}.npy") as tmp, tmp.open("wb") as handle:
            np.save(handle, window.labels)
        if path.exists():
            with np.load(path) as existing:
                if "images" in existing.files and batch_digest(existing["images"]) == digest:
                    continue
        with atomic_path(path) as tmp, tmp.open("wb") as handle:
            np.savez_compressed(handle, images=window.images)
        written.append(path)
        shifted = index >= cfg.shifted_from and cfg.shift != "none"
        log.info("%s: %d images, %s", path, len(window.images),
                 f"shift {cfg.shift} at {cfg.strength}" if shifted else "no shift")
    return written


def answer_queue(queue: Path, truth: Path, labels: Path) -> Path | None:
    """Fill the queue's empty labels from the true ones, as a diligent annotator would, into a new CSV in
    `labels` named after the queue's content; None when the queue asks for nothing."""
    with queue.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    answers: dict[str, np.ndarray] = {}
    for row in rows:
        prefix, index = row["image_id"].rsplit("-", 1)
        if prefix not in answers:
            answers[prefix] = np.load(truth / f"{prefix}.npy")
        row["label"] = str(int(answers[prefix][int(index)]))
    out = labels / f"answers-{batch_digest(np.array([r['image_id'] for r in rows]))[:ID_DIGITS]}.csv"
    with atomic_path(out) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image_id", "label", "purpose"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `stream` writes the simulated arrivals, `annotate` answers the labelling queue."""
    parser = argparse.ArgumentParser(prog="python -m groundwork.adaptive.simulate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH, help="params file (adaptive.stream)")
    commands = parser.add_subparsers(dest="command", required=True)
    stream = commands.add_parser("stream", help="write the simulated stream's batches into the incoming folder")
    stream.add_argument("--upto", type=int, default=None, metavar="K", help="write batches 0..K-1 only")
    stream.add_argument("--target", type=Path, default=Path("data/processed/target.npz"), help="ingest's target")
    stream.add_argument("--incoming", type=Path, default=INCOMING_DIR, help="where batches arrive")
    stream.add_argument("--truth", type=Path, default=TRUTH_DIR, help="where the true labels are kept")
    annotate = commands.add_parser("annotate", help="answer the labelling queue with the true labels")
    annotate.add_argument("--queue", type=Path, default=QUEUE_FILE, help="the ask stage's queue")
    annotate.add_argument("--truth", type=Path, default=TRUTH_DIR, help="the stream's true labels")
    annotate.add_argument("--labels", type=Path, default=LABELS_DIR, help="where labels are given back")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "annotate":
        if not args.queue.exists():
            print(f"{args.queue}: no labelling queue yet (`make loop` writes one on a drift alarm)", file=sys.stderr)
            return 1
        written = answer_queue(args.queue, args.truth, args.labels)
        print(f"labelled the queue into {written}" if written else f"{args.queue}: the queue is empty")
        return 0
    try:
        params = load_params(args.params)
    except ParamsError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        written = write_stream(params, target=args.target, incoming=args.incoming, truth=args.truth, upto=args.upto)
    except DataError as exc:
        print(f"{exc}; the stream is drawn from ingest's target data: run the pipeline first (`make run`)",
              file=sys.stderr)
        return 1
    print(f"{len(written)} new batch(es) in {args.incoming}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
