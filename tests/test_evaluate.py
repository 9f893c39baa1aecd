"""evaluate: scores, sizes and latency for every variant; the table, confusion plot and predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from groundwork.compression.names import SERVED, VARIANTS
from groundwork.params import Params
from tasks import evaluate


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
               "pareto_out": tmp_path / "pareto.png", "predictions_dir": tmp_path / "predictions"}
    metrics = evaluate.run(tiny_params, transferred=tiny_transferred["model"], compressed=tiny_compressed["dir"],
                           target=tiny_data["target"], **outputs)
    variants = metrics["variants"]
    assert list(variants) == list(VARIANTS)
    assert variants["fp32"]["accuracy"] == pytest.approx(tiny_transferred["metrics"]["transfer_accuracy"])
    assert variants["fp32_onnx"]["accuracy"] == pytest.approx(variants["fp32"]["accuracy"], abs=0.01)
    assert variants["fp32"]["accuracy_drop_points"] == 0
    for scores in variants.values():
        assert {"accuracy", "precision", "recall", "f1", "params", "nonzero_params", "bytes", "compressed_bytes",
                "latency_p50_ms", "latency_p95_ms", "throughput_b32", "throughput_vs_fp32_onnx",
                "times_smaller_than_fp32_state_dict", "vs_fp32_p_value", "vs_fp32_loss_upper_points"} <= set(scores)
        assert 0 < scores["latency_p50_ms"] <= scores["latency_p95_ms"]
        assert scores["accuracy_low"] < scores["accuracy"] < scores["accuracy_high"] or scores["accuracy"] in (0, 1)
        assert scores["f1_low"] <= scores["f1"] <= scores["f1_high"]
        assert scores["throughput_vs_fp32_onnx_low"] <= scores["throughput_vs_fp32_onnx"] \
            <= scores["throughput_vs_fp32_onnx_high"]
        assert 0 < scores["nonzero_params"] <= scores["params"]
    # the reference against itself: no discordant image, and its ratio to itself is exactly 1 in every round
    assert variants["fp32"]["vs_fp32_losses"] == variants["fp32"]["vs_fp32_wins"] == 0
    assert variants["fp32_onnx"]["throughput_vs_fp32_onnx"] == pytest.approx(1.0)
    selection = metrics["selection"]
    assert selection["chosen"] in variants and set(selection["standings"]) == set(SERVED)
    assert selection["standings"][selection["chosen"]].startswith("chosen")
    assert metrics["registry"] == {"registered": False, "variant": selection["chosen"]}
    assert variants["packed"]["times_smaller_than_fp32_state_dict"] > 8
    assert variants["pruned"]["nonzero_params"] < 0.3 * variants["pruned"]["params"]
    table = pd.read_csv(outputs["table_out"], index_col="variant")
    assert table.loc["int8", "bytes"] == variants["int8"]["bytes"]
    predictions = pd.read_csv(outputs["predictions_dir"] / "int8.csv")
    assert len(predictions) == metrics["test_images"]
    assert (predictions["actual"] == predictions["predicted"]).mean() == pytest.approx(variants["int8"]["accuracy"])
    assert outputs["confusion_out"].read_bytes()[:4] == b"\x89PNG"
    assert outputs["pareto_out"].read_bytes()[:4] == b"\x89PNG"


def test_pareto_front_keeps_only_unbeaten_points() -> None:
    from groundwork.plots import pareto_front

    cost = pd.Series({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0})
    accuracy = pd.Series({"a": 0.90, "b": 0.95, "c": 0.94, "d": 0.99})
    assert pareto_front(cost, accuracy) == ["a", "b", "d"]
