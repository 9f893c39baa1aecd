"""`groundwork watch`: tell Prefect when data arrives. Watches the project's data/incoming folder and, once a
change has settled (a burst of files is one arrival), emits one `groundwork.batch.arrived` event naming what
arrived. The `hourly-adaptive` deployment of prefect.yaml has a trigger on that event, so a served loop (`make
schedule-loop`) runs an iteration as soon as a batch lands, one run at a time as its concurrency limit says; its
hourly schedule stays as the fallback for what arrives while a run is going.

Events need a running Prefect server that both this command and the served deployment talk to (PREFECT_API_URL).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from groundwork.adaptive.watch import ArrivalWatch

ARRIVED = "groundwork.batch.arrived"
INCOMING = Path("data/incoming")
RESOURCE_PREFIX = "groundwork.incoming."  # + the project folder's name: the trigger matches groundwork.incoming.*


class NoEventServer(RuntimeError):
    """Events cannot be sent: no Prefect server is configured."""


def arrival_event(root: Path, entries: list[str]) -> dict[str, object]:
    """The event's fields for `entries` arrived in `root`'s incoming folder."""
    return {"event": ARRIVED,
            "resource": {"prefect.resource.id": f"{RESOURCE_PREFIX}{root.name}",
                         "prefect.resource.name": str(root / INCOMING)},
            "payload": {"entries": entries, "project": str(root)}}


def emit_arrival(root: Path, entries: list[str]) -> None:
    """Send the arrival event to the Prefect server and wait until it is delivered."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    if emit_event(**arrival_event(root, entries)) is None:  # type: ignore[arg-type]
        raise NoEventServer("Prefect did not send the event: is PREFECT_API_URL set?")
    EventsWorker.drain_all(timeout=10)


def require_event_server() -> str:
    """The Prefect API the events go to; NoEventServer when none is configured (a temporary server would vanish
    with this command, and no deployment could hear it)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise NoEventServer("PREFECT_API_URL is not set: events need a running Prefect server that the served loop "
                            "also uses (`prefect server start`, then `prefect config set "
                            "PREFECT_API_URL=http://127.0.0.1:4200/api`)")
    return url


def watch(root: Path, *, interval: float, settle: float, emit: Callable[[Path, list[str]], None] = emit_arrival,
          keep_going: Callable[[], bool] = lambda: True) -> None:
    """Look at the incoming folder every `interval` seconds and emit an event for each settled arrival."""
    watcher = ArrivalWatch(root / INCOMING, settle)
    watcher.start(time.monotonic())
    print(f"watching {root / INCOMING}: an arrival emits {ARRIVED} once the folder has been still for {settle:g} s",
          flush=True)
    while keep_going():
        time.sleep(interval)
        arrived = watcher.look(time.monotonic())
        if arrived:
            emit(root, arrived)
            print(f"arrived: {', '.join(arrived)} ({ARRIVED} emitted)", flush=True)
