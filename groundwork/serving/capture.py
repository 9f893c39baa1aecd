"""What the served model is asked, kept for the adaptive loop: each request's images as the model took them
(28x28 uint8, light ink on black, after the classifier's own formatting) and its answers (class and confidence),
written as a batch file into the project's incoming folder once `batch_size` images are held, so the loop watches
the requests the champion actually answers. Off unless `groundwork serve` turns it on (params
`adaptive.capture`), through the two environment variables below that each server process reads when it loads the
model. Part of the served model's code (standard library and numpy only); a file appears whole (written beside it
under a dot name, then renamed), and images held when a server stops are not written."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

CAPTURE_DIR_ENV = "GROUNDWORK_CAPTURE_DIR"  # the incoming folder batches go to
CAPTURE_BATCH_ENV = "GROUNDWORK_CAPTURE_BATCH"  # images per written batch


class RequestCapture:
    """Holds requests' images and answers; every `batch_size` images become one .npz batch in `folder`. Safe
    to call from the server's threads."""

    def __init__(self, folder: Path, batch_size: int) -> None:
        self.folder, self.batch_size = folder, batch_size
        self._lock = threading.Lock()
        self._images: list[np.ndarray] = []
        self._classes: list[np.ndarray] = []
        self._confidence: list[np.ndarray] = []
        self._held = self._written = 0

    def add(self, images: np.ndarray, probabilities: np.ndarray) -> Path | None:
        """Hold one request's images (N, 28, 28 uint8) and class probabilities (N, classes); the batch file
        written when this request filled one, else None."""
        with self._lock:
            self._images.append(images)
            self._classes.append(probabilities.argmax(axis=1))
            self._confidence.append(probabilities.max(axis=1).astype(np.float32))
            self._held += len(images)
            if self._held < self.batch_size:
                return None
            batch = {"images": np.concatenate(self._images), "predicted": np.concatenate(self._classes),
                     "confidence": np.concatenate(self._confidence)}
            self._images, self._classes, self._confidence, self._held = [], [], [], 0
            self._written += 1
            name = f"served-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{self._written:04d}"
        self.folder.mkdir(parents=True, exist_ok=True)
        written, hidden = self.folder / f"{name}.npz", self.folder / f".{name}.tmp.npz"
        np.savez(hidden, **batch)
        os.replace(hidden, written)
        return written


def capture_from_environment() -> RequestCapture | None:
    """The capture `groundwork serve` asked for through the environment; None when it is off."""
    folder = os.environ.get(CAPTURE_DIR_ENV)
    return None if not folder else RequestCapture(Path(folder), int(os.environ.get(CAPTURE_BATCH_ENV, "250")))
