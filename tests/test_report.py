"""The README's results table is the render of the committed results file, and the render says what it should.

Fast: no pipeline run. The committed file (docs/results.json) comes from a finished default run through
`groundwork report collect`; these tests only read it, and build a small results file of their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from groundwork import report
from groundwork.project import ROOT


def variant(accuracy: float, size: int, speed: float, lost: int = 0, won: int = 0) -> dict[str, float]:
    return {"accuracy": accuracy, "accuracy_low": accuracy - 0.01, "accuracy_high": accuracy + 0.005,
            "vs_fp32_losses": lost, "vs_fp32_wins": won, "vs_fp32_loss_upper_points": 0.5, "bytes": size,
            "times_smaller_than_fp32_state_dict": 1_885_891 / size, "throughput_vs_fp32_onnx": speed,
            "throughput_vs_fp32_onnx_low": speed * 0.9, "throughput_vs_fp32_onnx_high": speed * 1.1}


@pytest.fixture()
def results() -> dict:
    fp32_onnx = variant(0.9903, 1_877_072, 1.0)
    fp32_onnx |= {"throughput_vs_fp32_onnx_low": 1.0, "throughput_vs_fp32_onnx_high": 1.0}
    return {
        "format": report.FORMAT,
        "provenance": {"command": "make run", "commit": "0123456789abcdef0123456789abcdef01234567",
                       "date": "2026-12-05 10:30 UTC", "cpu": "Example CPU 9000", "cores": 2},
        "test_images": 719,
        "pretrain": {"train_images": 11997, "source_test_accuracy": 0.992},
        "transfer": {"mode": "discriminative", "head": "keep", "semi_supervised": "fixmatch", "train_images": 100,
                     "source_only_accuracy": 0.9485, "scratch_accuracy": 0.9791, "transfer_accuracy": 0.9903},
        "variants": {"fp32_onnx": fp32_onnx, "structured_int8": variant(0.9917, 136_061, 3.06, lost=0, won=1)},
        "selection": {"chosen": "structured_int8", "rule": "best throughput ...", "dominated_by": []},
        "registry": {"registered": True, "model": "groundwork-digits", "version": 3, "variant": "structured_int8",
                     "promoted": True, "reason": "significantly faster at no loss"},
    }


def test_the_readme_table_is_the_render_of_the_committed_results_file() -> None:
    """Fails when someone edits the figures by hand, or commits a results file without rendering it. Before the
    first results file is committed, the block between the markers must be empty."""
    why = report.stale(ROOT / report.README_FILE, ROOT / report.RESULTS_FILE)
    assert why is None, why


def test_the_committed_results_file_says_where_its_numbers_come_from() -> None:
    if not (ROOT / report.RESULTS_FILE).exists():
        pytest.skip("no results file committed yet (`groundwork report collect` after a default run)")
    results = json.loads((ROOT / report.RESULTS_FILE).read_text())
    source = results["provenance"]
    assert len(source["commit"]) == 40 and all(c in "0123456789abcdef" for c in source["commit"])
    assert source["date"] and source["cpu"] and source["cores"] >= 1
    assert results["selection"]["chosen"] in results["variants"]


def test_render_gives_provenance_one_row_per_variant_the_registered_one_and_the_gate(results: dict) -> None:
    table = report.render_table(results)
    assert "commit `0123456789ab`" in table and "2026-12-05 10:30 UTC" in table
    assert "Example CPU 9000 (2 cores)" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| variant |") and len(rows) == 3
    assert rows[1] == "| fp32_onnx | 99.03% [98.03%, 99.53%] | 0 / 0 | 1.79 MiB | 1.0 | 1.00x |"
    assert rows[2] == ("| **structured_int8** (registered) | 99.17% [98.17%, 99.67%] | 0 / 1 | 132.9 KiB | 13.9 | "
                       "3.06x [2.75, 3.37] |")
    assert "source-only 94.85%, from scratch 97.91%, transfer 99.03%" in table
    assert "99.20% on the source's held-out test digits" in table
    assert ("Registered: `structured_int8` as version 3 of `groundwork-digits`; promoted to champion "
            "(significantly faster at no loss).") in table


def test_render_replaces_only_the_block_between_the_markers_and_check_finds_a_hand_edit(
        results: dict, tmp_path: Path) -> None:
    readme, results_file = tmp_path / "README.md", tmp_path / "docs" / "results.json"
    report.write_results(results, results_file)
    readme.write_text(f"# title\n\nbefore\n{report.START}\nold figures\n{report.END}\nafter\n")
    assert report.stale(readme, results_file) is not None
    assert report.render_into(readme, results_file)
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith(f"{report.END}\nafter\n")
    assert "old figures" not in text and report.stale(readme, results_file) is None
    assert not report.render_into(readme, results_file)  # nothing to change the second time
    assert report.stale(readme, tmp_path / "absent.json") is not None  # figures with no file they came from

    readme.write_text(text.replace("99.17%", "99.31%", 1))
    args = [sys.executable, "-m", "groundwork.report", "--project-dir", str(tmp_path), "check"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == report.EXIT_STALE
    assert len(done.stderr.strip().splitlines()) == 1 and "differs from" in done.stderr


def test_an_empty_block_passes_until_a_results_file_exists(results: dict, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{report.START}\n{report.END}\n")
    assert report.stale(readme, tmp_path / "results.json") is None
    report.write_results(results, tmp_path / "results.json")
    assert report.stale(readme, tmp_path / "results.json") is not None


def test_a_readme_without_markers_or_a_run_without_reports_is_bad_input(results: dict, tmp_path: Path) -> None:
    with pytest.raises(report.ReportError, match="results:start"):
        report.render_readme("# no markers\n", results)
    assert report.main(["--project-dir", str(tmp_path), "collect"]) == report.EXIT_BAD_INPUT


def test_collect_reads_a_runs_reports(results: dict, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    extra = {"precision": 0.99, "latency_p50_ms": 0.1}
    evaluate = {"test_images": 719, "variants": {name: scores | extra for name, scores in results["variants"].items()},
                "selection": results["selection"], "registry": results["registry"] | {"model_id": "m-1"}}
    (reports / "evaluate.json").write_text(json.dumps(evaluate))
    (reports / "pretrain.json").write_text(json.dumps(results["pretrain"] | {"epochs": 10}))
    (reports / "transfer.json").write_text(json.dumps(results["transfer"] | {"gain_points": 1.1}))
    collected = report.collect(tmp_path)
    assert collected["variants"] == results["variants"]
    assert collected["registry"] == results["registry"]
    assert collected["provenance"]["cpu"] and collected["provenance"]["cores"] >= 1
    assert collected["provenance"]["commit"]  # "unknown" outside a git checkout
    report.render_table(collected)


def test_groundwork_report_is_a_subcommand_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import parser

    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["report", "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0 and out.startswith("usage: groundwork report ")
    assert "collect" in out and "render" in out and "check" in out
