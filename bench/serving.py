"""The champion served over HTTP (`groundwork serve`: MLflow's scoring server) against the same model called in
process, side by side in one run: batch throughput, single-image latency, and a bounded load test.

1. Throughput: a batch of 256 target test images per call, in the two forms a request may hold them: numbers
   (a JSON array of the uint8 pixels) and files (each image a base64-encoded PNG). The JSON body is encoded once
   beforehand (a client's own cost), the answer decoded. In process, `predict` on the uint8 array (the baseline
   of both ratios) and on the same PNG files. Every path includes the model's preprocessing. Ratio: HTTP
   images/s over in-process images/s.
2. Latency of one image: p50 and p95 of each path.
3. Load: `--clients` threads send single-image requests for `--seconds`; every failed request is counted, and the
   server's resident memory (its process tree, from /proc) is read after a warm-up and at the end.
4. Capture (params adaptive.capture): the served classifier on the champion's ONNX file, built twice, the capture
   off and on (a batch file every 250 images, into a temporary folder), timed interleaved on batches and on single
   images. Ratio: capturing over not, per path.

Needs a pipeline run (`make run`: the champion and data/processed/target.npz). Linux only (/proc).
Usage: PYTHONPATH=. .venv/bin/python bench/serving.py [--runs N] [--clients C] [--seconds S]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from groundwork.serving.capture import CAPTURE_BATCH_ENV, CAPTURE_DIR_ENV
from groundwork.serving.classifier import ONNX_ARTIFACT, DigitClassifier
from groundwork.serving.package import served_contract

BATCH = 256


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_rss_bytes(root: int) -> int:
    """Resident memory of a process and all its descendants (the CLI, MLflow's server, uvicorn's workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, []))
        try:
            status = (Path("/proc") / str(pid) / "status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def post(url: str, body: bytes) -> list[dict[str, object]]:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"]


def png_base64(image: np.ndarray) -> str:
    """A gray uint8 image as a base64-encoded PNG file, what a client reading image files sends."""
    from PIL import Image

    encoded = io.BytesIO()
    Image.fromarray(image).save(encoded, format="PNG")
    return base64.b64encode(encoded.getvalue()).decode("ascii")


def timed_ms(call, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def percentile(values: list[float], share: float) -> float:
    return float(np.percentile(values, share * 100))


def load_test(url: str, body: bytes, clients: int, seconds: float) -> tuple[int, int]:
    """(requests answered, requests failed) by `clients` threads sending `body` for `seconds`."""
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            try:
                post(url, body)
                outcome = "ok"
            except (OSError, ValueError, urllib.error.HTTPError):
                outcome = "failed"
            with lock:
                counts[outcome] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts["ok"], counts["failed"]


def classifier(onnx: Path, contract: dict[str, Any]) -> DigitClassifier:
    """The served classifier on `onnx`, loaded as MLflow loads it (its artifact and model config)."""
    model = DigitClassifier()
    model.load_context(SimpleNamespace(artifacts={ONNX_ARTIFACT: str(onnx)}, model_config=contract))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="timed batch calls per path (latency: 10x as many)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the load test")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the load test")
    parser.add_argument("--project-dir", type=Path, default=Path("."), help="a project that has run")
    args = parser.parse_args()

    import mlflow

    from groundwork.params import load_params
    from groundwork.tracking.runs import tracking_uri

    project = args.project_dir.resolve()
    name = load_params(project / "params.yaml").evaluate.registered_model
    with np.load(project / "data" / "processed" / "target.npz") as stored:
        test = stored["test_images"]
    batch, single = test[np.arange(BATCH) % len(test)], test[:1]
    batch_body, single_body = (json.dumps({"inputs": images.tolist()}).encode() for images in (batch, single))
    batch_files = [png_base64(image) for image in batch]
    files_body = json.dumps({"inputs": batch_files}).encode()

    mlflow.set_tracking_uri(tracking_uri(project))
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    # the classifier the server runs, on the champion's ONNX file, built twice: the capture off and on (it reads
    # its settings from the environment as it loads)
    onnx = next(Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion")).rglob("*.onnx"))
    contract = served_contract(load_params(project / "params.yaml").ingest.target)
    plain = classifier(onnx, contract)
    captured_into = Path(tempfile.mkdtemp(prefix="capture-"))
    os.environ.update({CAPTURE_DIR_ENV: str(captured_into), CAPTURE_BATCH_ENV: "250"})
    capturing = classifier(onnx, contract)
    for variable in (CAPTURE_DIR_ENV, CAPTURE_BATCH_ENV):  # the server below must not capture
        del os.environ[variable]
    url = f"http://127.0.0.1:{free_port()}"
    log = open(project / "serve-bench.log", "wb")  # noqa: SIM115 - open for the server's whole life
    server = subprocess.Popen([str(Path(sys.executable).parent / "groundwork"), "serve", "--project-dir",
                               str(project), "--port", url.rsplit(":", 1)[1]], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start: see {log.name}") from None
                time.sleep(0.5)
        served = post(url, batch_body)
        classes = list(model.predict(batch)["class"])
        assert [row["class"] for row in served] == classes, "HTTP and in process differ"
        assert [row["class"] for row in post(url, files_body)] == classes, "PNG files and arrays differ"

        calls: dict[str, list[float]] = {"in process, array": [], "in process, PNG files": [],
                                         "HTTP, JSON array": [], "HTTP, PNG files": []}
        for _round in range(2):  # interleaved, so a slow spell of the machine hits every path
            calls["in process, array"] += timed_ms(lambda: model.predict(batch), args.runs)
            calls["HTTP, JSON array"] += timed_ms(lambda: post(url, batch_body), args.runs)
            calls["in process, PNG files"] += timed_ms(lambda: model.predict(batch_files), args.runs)
            calls["HTTP, PNG files"] += timed_ms(lambda: post(url, files_body), args.runs)
        rates = {path: BATCH / (statistics.median(times) / 1000) for path, times in calls.items()}
        capture_calls: dict[str, list[float]] = {"batch": [], "batch, capturing": [], "one": [], "one, capturing": []}
        for _round in range(2):
            capture_calls["batch"] += timed_ms(lambda: plain.predict(None, batch), args.runs)
            capture_calls["batch, capturing"] += timed_ms(lambda: capturing.predict(None, batch), args.runs)
            capture_calls["one"] += timed_ms(lambda: plain.predict(None, single), 5 * args.runs)
            capture_calls["one, capturing"] += timed_ms(lambda: capturing.predict(None, single), 5 * args.runs)
        written = len(list(captured_into.glob("*.npz")))
        local_one = timed_ms(lambda: model.predict(single), 10 * args.runs)
        http_one = timed_ms(lambda: post(url, single_body), 10 * args.runs)

        load_test(url, single_body, args.clients, 3.0)  # warm-up: every worker thread and buffer in use
        before = tree_rss_bytes(server.pid)
        answered, failed = load_test(url, single_body, args.clients, args.seconds)
        after = tree_rss_bytes(server.pid)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()

    print(f"{os.cpu_count()} CPUs; the champion ({name}), uint8 target test images, 1 server worker")
    print(f"batch of {BATCH}, median of {2 * args.runs} calls each (images/s; ratio: over in process, array):")
    for path, rate in rates.items():
        print(f"  {path:22s} {rate:8.0f}   ratio {rate / rates['in process, array']:.2f}")
    print(f"  HTTP, PNG files over in process, PNG files: "
          f"{rates['HTTP, PNG files'] / rates['in process, PNG files']:.2f}")
    print(f"one image, {10 * args.runs} calls each (ms):")
    print(f"  in process p50 {percentile(local_one, 0.5):7.2f}  p95 {percentile(local_one, 0.95):7.2f}")
    print(f"  HTTP       p50 {percentile(http_one, 0.5):7.2f}  p95 {percentile(http_one, 0.95):7.2f}")
    print(f"load: {args.clients} clients x {args.seconds:.0f} s of single-image requests: {answered} answered "
          f"({answered / args.seconds:.0f}/s), {failed} failed")
    print(f"  server memory {before / 2**20:.1f} MiB after warm-up -> {after / 2**20:.1f} MiB after "
          f"({(after / before - 1) * 100:+.1f}%)")
    print(f"capture on against off, in process, interleaved (median ms; {written} batch files written):")
    for path in ("batch", "one"):
        plain, kept = (statistics.median(capture_calls[key]) for key in (path, f"{path}, capturing"))
        print(f"  {path:6s} off {plain:7.3f}  on {kept:7.3f}   ratio {kept / plain:.3f}  (p95 ratio "
              f"{percentile(capture_calls[f'{path}, capturing'], 0.95) / percentile(capture_calls[path], 0.95):.3f})")
    shutil.rmtree(captured_into)


if __name__ == "__main__":
    main()
