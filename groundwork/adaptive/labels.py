"""Labels people give back: CSV files in `data/labels/` (the labelling queue, filled in, or any list of
corrections), checked row by row before anything from them is used.

Columns: `image_id` and `label` are required; `purpose` (`train` or `holdout`) says whether the image teaches
the challenger or scores it, and defaults to `train` (a correction of a wrong prediction). Rows whose label is
still empty are not labelled yet and are skipped. An unknown image id, a label outside the classes, two
different labels for one image, or a malformed row stops the whole read with the file and row named.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from groundwork.adaptive.incoming import Arrivals, images_by_id, read_arrivals
from groundwork.data.datasets import NUM_CLASSES
from groundwork.data.untrusted import MAX_LABELS_BYTES, check_file_size
from groundwork.errors import DataError
from groundwork.params import Params

PURPOSES = ("train", "holdout")
REQUIRED = ("image_id", "label")


@dataclass(frozen=True)
class Label:
    """One labelled image, and where the label came from."""

    image_id: str
    label: int
    purpose: str
    source: str  # file:row


def _parse_row(row: dict[str, str | None], where: str, known: set[str]) -> Label | None:
    if None in row or any(value is None for value in row.values()):
        raise DataError(f"{where}: malformed row (expected as many fields as the header)")
    image_id, text = (row["image_id"] or "").strip(), (row["label"] or "").strip()
    if not text:
        return None  # not labelled yet
    if image_id not in known:
        raise DataError(f"{where}: unknown image id {image_id!r} (not in any arrived batch)")
    try:
        label = int(text)
    except ValueError:
        raise DataError(f"{where}: label {text!r} is not a class number 0..{NUM_CLASSES - 1}") from None
    if not 0 <= label < NUM_CLASSES:
        raise DataError(f"{where}: label {label} is outside the classes 0..{NUM_CLASSES - 1}")
    purpose = (row.get("purpose") or "train").strip()
    if purpose not in PURPOSES:
        raise DataError(f"{where}: purpose {purpose!r} must be one of {', '.join(PURPOSES)}")
    return Label(image_id, label, purpose, where)


def read_labels(folder: Path, known: set[str]) -> dict[str, Label]:
    """Every label in `folder`'s CSV files (a missing folder has none), by image id; DataError naming the file
    and row of the first problem, in which case nothing is returned."""
    labels: dict[str, Label] = {}
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    for path in files:
        try:
            check_file_size(path, MAX_LABELS_BYTES)
        except ValueError as exc:
            raise DataError(f"{path}: not a labels file ({exc})") from None
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                missing = [name for name in REQUIRED if name not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(f"{path}: missing column(s) {missing}; the header is {reader.fieldnames}")
                for number, row in enumerate(reader, start=2):  # row 1 is the header
                    label = _parse_row(row, f"{path}:{number}", known)
                    if label is None:
                        continue
                    earlier = labels.get(label.image_id)
                    if earlier is not None and earlier.label != label.label:
                        raise DataError(f"{label.source}: image {label.image_id} labelled {label.label}, but "
                                        f"{earlier.source} labelled it {earlier.label}")
                    if earlier is not None and earlier.purpose != label.purpose:
                        raise DataError(f"{label.source}: image {label.image_id} given for {label.purpose}, but "
                                        f"{earlier.source} gave it for {earlier.purpose}")
                    labels[label.image_id] = label
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    return labels


def arrivals_and_labels(params: Params, incoming: Path,
                        labels: Path) -> tuple[Arrivals, dict[str, np.ndarray], dict[str, Label]]:
    """What ask and adapt both start from: the arrived batches, their images by id, and the labels given for them."""
    arrivals = read_arrivals(incoming, params.ingest.target, min_batch=params.adaptive.monitor.min_batch)
    images = images_by_id(arrivals.batches)
    return arrivals, images, read_labels(labels, set(images))
