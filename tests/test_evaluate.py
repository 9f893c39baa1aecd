"""evaluate: scores, sizes and latency for every variant; the table, confusion plot and predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks import evaluate
from tasks.params import Params


def test_classification_scores_match_hand_counts() -> None:
    labels = np.array([0, 0, 1, 1])
    predicted = np.array([0, 1, 1, 1])
    scores = evaluate.classification_scores(labels, predicted)
    assert scores["accuracy"] == 0.75
    assert scores["precision"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert scores["recall"] == pytest.approx((0.5 + 1.0) / 2)


def test_run_scores_every_variant(tmp_path: Path, tiny_params: Params, tiny_data: dict[str, Path],
                                  tiny_transferred: dict[str, Any], tiny_compressed: dict[str, Any]) -> None:
    outputs = {"table_out": tmp_path / "evaluate.csv", "confusion_out": tmp_path / "confusion.png",
               "predictions_dir": tmp_path / "predictions"}
    metrics = evaluate.run(tiny_params, transferred=tiny_transferred["model"], compressed=tiny_compressed["dir"],
                           target=tiny_data["target"], **outputs)
    variants = metrics["variants"]
    assert set(variants) == {"fp32", "pruned", "fp32_onnx", "int8"}
    assert variants["fp32"]["accuracy"] == pytest.approx(tiny_transferred["metrics"]["transfer_accuracy"])
    for scores in variants.values():
        assert {"accuracy", "precision", "recall", "f1", "bytes", "latency_p50_ms", "latency_p95_ms",
                "throughput_b32"} <= set(scores)
        assert 0 < scores["latency_p50_ms"] <= scores["latency_p95_ms"]
        assert scores["throughput_b32"] > 0
    table = pd.read_csv(outputs["table_out"], index_col="variant")
    assert table.loc["int8", "bytes"] == variants["int8"]["bytes"]
    predictions = pd.read_csv(outputs["predictions_dir"] / "int8.csv")
    assert len(predictions) == metrics["test_images"]
    assert (predictions["actual"] == predictions["predicted"]).mean() == pytest.approx(variants["int8"]["accuracy"])
    assert outputs["confusion_out"].read_bytes()[:4] == b"\x89PNG"
