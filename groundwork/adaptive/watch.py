"""Noticing arrivals in the incoming folder: what changed since the last look, reported once the folder has been
still for a while, so that a burst of files (a batch copied in parts, several batches at once) is one arrival, not
one per file. Pure bookkeeping over file names, sizes and modification times: the command that emits a Prefect
event for each arrival is flows/watch.py (`groundwork watch`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

Snapshot = dict[str, tuple[int, int]]  # entry name -> (bytes, latest modification in ns), a folder summed over


def snapshot(folder: Path) -> Snapshot:
    """Every visible entry of `folder` (a batch is a file or a folder of images), with its size and latest change;
    an empty snapshot when the folder does not exist yet."""
    if not folder.is_dir():
        return {}
    seen: Snapshot = {}
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        stats = [path.stat() for path in files]
        seen[entry.name] = (sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0))
    return seen


@dataclass
class ArrivalWatch:
    """The arrivals of one folder: `look` returns the entries that are new or changed since the last arrival it
    reported, once the folder has not changed for `settle` seconds; None until then. Entries there when the watch
    starts are not arrivals (the loop's schedule picks them up)."""

    folder: Path
    settle: float
    reported: Snapshot = field(default_factory=dict)
    last: Snapshot = field(default_factory=dict)
    still_since: float = 0.0

    def start(self, now: float) -> None:
        self.reported = self.last = snapshot(self.folder)
        self.still_since = now

    def look(self, now: float) -> list[str] | None:
        current = snapshot(self.folder)
        if current != self.last:
            self.last, self.still_since = current, now
            return None
        arrived = sorted(name for name, state in current.items() if self.reported.get(name) != state)
        if not arrived or now - self.still_since < self.settle:
            return None
        self.reported = current
        return arrived
