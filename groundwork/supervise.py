"""`python -m groundwork.supervise -- <command...>`: run a server command in a process group of its own and stay
with it, holding nothing else. `groundwork serve` and `groundwork ui` hand over to it (exec, same process id) once
their checks are done, so the process a service manager started stays small (the checks import MLflow: about
900 MiB that would otherwise sit there while the server runs).

SIGTERM (what systemd, Docker and Kubernetes send) and SIGINT (Ctrl-C) reach the whole group: the server and the
workers it started (MLflow's CLI starts uvicorn, which starts its own), none of which is left holding the port.
This module imports the standard library only. Where there are no process groups (Windows), the signal reaches the
server process alone (terminate, then kill after the grace period); its own workers are its business there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

GRACE_S = 10.0  # how long the group gets to stop after the signal before it is killed
GROUPS = hasattr(os, "killpg")  # POSIX process groups


def _signal(server: subprocess.Popen[bytes], signum: int | None) -> None:
    """`signum` to the server's group; None kills it (SIGKILL). Without process groups, to the server alone."""
    with contextlib.suppress(ProcessLookupError):
        if GROUPS:
            os.killpg(server.pid, signal.SIGKILL if signum is None else signum)
        elif signum is None:
            server.kill()
        else:
            server.terminate()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member exists that is no longer ours to signal
        return True
    return True


def _stop_group(server: subprocess.Popen[bytes], signum: int) -> None:
    """Send `signum` to the server's group, then SIGKILL whatever is left of it after GRACE_S. The server is
    reaped as it goes: until then its exited process would still count as a member of the group."""
    _signal(server, signum)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        if server.poll() is not None and not (GROUPS and _group_alive(server.pid)):
            return
        time.sleep(0.05)
    _signal(server, None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command after `--`; return its exit code (128 + the signal's number when a signal ended it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m groundwork.supervise -- <command> [args...]", file=sys.stderr)
        return 2
    received: list[tuple[int, float]] = []  # (signal, when)
    started: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: object) -> None:
        # only passed on here; the loop below waits and reaps (the handler may interrupt a poll holding its lock)
        received.append((signum, time.monotonic()))
        for server in started:
            _signal(server, signum)

    for signum in (signal.SIGTERM, signal.SIGINT):  # before the start: a signal in between is passed on too
        signal.signal(signum, forward)
    server = subprocess.Popen(args, start_new_session=GROUPS)  # its own group: signalled as one
    started.append(server)
    if received:
        _signal(server, received[0][0])
    while server.poll() is None:
        if received and time.monotonic() - received[0][1] > GRACE_S:
            _signal(server, None)
        time.sleep(0.1)
    _stop_group(server, signal.SIGTERM)  # the workers the server leaves behind, whether signalled or not
    if received:
        return 128 + received[0][0]
    return server.returncode if server.returncode >= 0 else 128 - server.returncode


if __name__ == "__main__":
    sys.exit(main())
