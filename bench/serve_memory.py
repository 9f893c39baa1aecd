"""Resident memory of the process tree `groundwork serve` leaves running, side by side with the launcher it replaced
(a process that imported MLflow to find the champion, then waited on MLflow's scoring server in a subprocess),
and how long SIGTERM to the command's own process takes to end every process of its tree.

Needs a project whose registry has a champion (after `make run`). Each tree is measured once the server answers
/health, then stopped with SIGTERM to the command's process (as systemd, Docker and Kubernetes stop a service).
Usage: PYTHONPATH=. .venv/bin/python bench/serve_memory.py [--project-dir DIR]
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

MIB = 1024**2
# what `groundwork serve` did before it handed over: the champion looked up with MLflow, then the server waited on
BASELINE = """
import os, subprocess, sys
from mlflow import MlflowClient
from groundwork.params import load_params
from groundwork.tracking.runs import tracking_uri
store = tracking_uri(__import__("pathlib").Path(".").resolve())
name = load_params("params.yaml").evaluate.registered_model
MlflowClient(store).get_model_version_by_alias(name, "champion")
os.environ["MLFLOW_TRACKING_URI"] = store
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]  # uvicorn, by name
sys.exit(subprocess.run([sys.executable, "-m", "mlflow", "models", "serve", "--model-uri", f"models:/{name}@champion",
                         "--env-manager", "local", "--port", sys.argv[1]]).returncode)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(command: list[str], project: Path, port: int) -> tuple[dict[str, int], int, float]:
    """(resident bytes by process, the launcher's own, seconds from SIGTERM until the whole tree is gone)."""
    process = subprocess.Popen(command, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        raise SystemExit(f"{command}: no answer on /health within 180 s")
    time.sleep(2)  # the workers settle
    launcher = psutil.Process(process.pid)
    tree = [launcher, *launcher.children(recursive=True)]
    rss = {f"{member.pid} {' '.join(member.cmdline()[1:4])[:50]}".replace("\n", " "): member.memory_info().rss
           for member in tree}
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=30)
    stopped = time.monotonic() - signalled
    for member in alive:  # the baseline leaves its server behind: cleaned up here, and reported
        print(f"  still running 30 s after SIGTERM, killed: {member.pid} {' '.join(member.cmdline()[1:4])}")
        member.kill()
    return rss, launcher_rss(rss, process.pid), stopped if not alive else float("inf")


def launcher_rss(rss: dict[str, int], pid: int) -> int:
    return next(value for key, value in rss.items() if key.startswith(f"{pid} "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-dir", type=Path, default=Path("."), help="a project with a champion")
    args = parser.parse_args()
    groundwork = str(Path(sys.executable).parent / "groundwork")
    rows = {}
    trees = {"before: launcher importing MLflow, waiting on the server": [sys.executable, "-c", BASELINE, "{port}"],
             "groundwork serve (hands over to groundwork.supervise)": [groundwork, "serve", "--port", "{port}"]}
    for label, template in trees.items():
        port = free_port()
        rss, own, stopped = measure([part.replace("{port}", str(port)) for part in template], args.project_dir, port)
        rows[label] = (sum(rss.values()), own, stopped)
        print(f"{label}:")
        for name, value in rss.items():
            print(f"  {value / MIB:7.0f} MiB  {name}")
    print(f"\n{'tree':58s} {'total MiB':>9s} {'launcher MiB':>12s} {'stopped after SIGTERM':>22s}")
    for label, (total, own, stopped) in rows.items():
        print(f"{label:58s} {total / MIB:9.0f} {own / MIB:12.0f} {stopped:20.1f} s")
    (before_total, before_own, _), (after_total, after_own, _) = rows.values()
    print(f"ratio, ours / before: tree {after_total / before_total:.2f}x, launcher {after_own / before_own:.2f}x")


if __name__ == "__main__":
    main()
