"""The flow's summary artifacts and parent-run headline, from a run's reports: what a reader sees in Prefect and
MLflow, formatted for a screen."""

from __future__ import annotations

import json
from pathlib import Path

from flows.summary import pipeline_headline, variant_rows
from groundwork.evaluation.variant_table import markdown_table

EVALUATE = {
    "selection": {"chosen": "structured_int8"},
    "registry": {"registered": True, "model": "groundwork-digits", "version": 3, "variant": "structured_int8",
                 "promoted": False, "reason": "not significantly more accurate than the champion"},
    "variants": {
        "fp32": {"accuracy": 0.9847, "accuracy_low": 0.9736, "accuracy_high": 0.9916, "f1": 0.98466,
                 "bytes": 1_234_567, "times_smaller_than_fp32_state_dict": 1.0, "throughput_vs_fp32_onnx": 0.31,
                 "throughput_vs_fp32_onnx_low": 0.29, "throughput_vs_fp32_onnx_high": 0.33,
                 "latency_p50_ms": 0.4121},
        "structured_int8": {"accuracy": 0.9833, "accuracy_low": 0.9719, "accuracy_high": 0.9905, "f1": 0.98312,
                            "vs_fp32_losses": 4, "vs_fp32_wins": 3, "vs_fp32_p_value": 1.0, "bytes": 98_765,
                            "times_smaller_than_fp32_state_dict": 12.5, "throughput_vs_fp32_onnx": 2.41,
                            "throughput_vs_fp32_onnx_low": 2.2, "throughput_vs_fp32_onnx_high": 2.6,
                            "latency_p50_ms": 0.0876},
    },
}


def project_with_reports(root: Path) -> Path:
    (root / "reports").mkdir()
    (root / "reports" / "evaluate.json").write_text(json.dumps(EVALUATE))
    (root / "reports" / "transfer.json").write_text(json.dumps({"transfer_accuracy": 0.9611, "train_images": 100}))
    (root / "reports" / "pretrain.json").write_text(json.dumps({"source_test_accuracy": 0.992}))
    return root


def test_the_variants_table_has_eight_formatted_columns(tmp_path: Path) -> None:
    fp32, chosen = variant_rows(project_with_reports(tmp_path))
    assert len(chosen) == 8
    assert chosen == {
        "variant": "structured_int8 (registered)", "accuracy [95% CI]": "98.33% [97.19%, 99.05%]", "F1": "0.9831",
        "vs fp32: lost / won (p)": "4 / 3 (p = 1)", "size": "96.5 KiB", "vs fp32 state dict": "12.5x smaller",
        "throughput vs fp32 ONNX [95% CI]": "2.41x [2.20, 2.60]", "p50 latency": "0.088 ms"}
    assert fp32["vs fp32 state dict"] == "fp32 size" and fp32["vs fp32: lost / won (p)"] == "n/a / n/a (p = n/a)"


def test_the_parent_run_headline_names_the_registered_variant_and_the_gate(tmp_path: Path) -> None:
    metrics, tags = pipeline_headline(project_with_reports(tmp_path))
    assert metrics == {"source_test_accuracy": 0.992, "transfer_accuracy": 0.9611, "registered_accuracy": 0.9833,
                       "registered_times_smaller": 12.5, "registered_throughput_vs_fp32_onnx": 2.41}
    assert tags["gate_decision"] == "not promoted: the champion stays"
    assert (tags["registered_model"], tags["registered_version"]) == ("groundwork-digits", "3")
    assert tags["mlflow.note.content"].startswith("Registered `groundwork-digits` version 3 (structured_int8): not "
                                                  "promoted: the champion stays. not significantly more accurate")


def test_a_markdown_table_is_padded_and_right_aligns_its_numbers() -> None:
    lines = markdown_table({"int8": {"accuracy": "99.03%", "size": "479.9 KiB"},
                            "**structured** (this version)": {"accuracy": "99.17%", "size": "463.6 KiB"}}, "variant")
    assert len({len(line) for line in lines}) == 1, "every line as wide: columns line up in plain text"
    assert lines[1].startswith("| ---") and lines[1].endswith(": |"), "names left, numbers right"
    assert lines[2] == "| int8                          |   99.03% | 479.9 KiB |"
