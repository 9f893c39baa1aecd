"""Model variants' scores as people read them: one formatting for the flow's Prefect table, the version card
and the summaries, so that a number reads the same wherever it is shown (reports/evaluate.json and MLflow keep
every figure unrounded)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def percent(value: Any) -> str:
    """0.99166 -> '99.17%'; 'n/a' for a missing value."""
    return f"{100 * value:.2f}%" if isinstance(value, int | float) else "n/a"


def number(value: Any, spec: str, suffix: str = "") -> str:
    """`value` in the format `spec`, then `suffix`; 'n/a' for a missing value."""
    return f"{value:{spec}}{suffix}" if isinstance(value, int | float) else "n/a"


def size(value: Any) -> str:
    """Bytes as KiB with thousands separators: 474756 -> '463.6 KiB'."""
    return number(value / 1024, ",.1f", " KiB") if isinstance(value, int | float) else "n/a"


def smaller(times: Any) -> str:
    """How much smaller than the fp32 state dict; an fp32 variant is its size, not "1.0x smaller"."""
    if not isinstance(times, int | float):
        return "n/a"
    return f"{times:.1f}x smaller" if times >= 1.05 else "fp32 size"


def variant_row(row: Mapping[str, Any]) -> dict[str, str]:
    """One variant's scores from reports/evaluate.json, formatted: the columns a screen shows."""
    return {"accuracy [95% CI]": f"{percent(row.get('accuracy'))} [{percent(row.get('accuracy_low'))}, "
                                 f"{percent(row.get('accuracy_high'))}]",
            "F1": number(row.get("f1"), ".4f"),
            "vs fp32: lost / won (p)": f"{number(row.get('vs_fp32_losses'), 'd')} / "
                                       f"{number(row.get('vs_fp32_wins'), 'd')} "
                                       f"(p = {number(row.get('vs_fp32_p_value'), '.2g')})",
            "size": size(row.get("bytes")),
            "vs fp32 state dict": smaller(row.get("times_smaller_than_fp32_state_dict")),
            "throughput vs fp32 ONNX [95% CI]": f"{number(row.get('throughput_vs_fp32_onnx'), '.2f', 'x')} "
                                                f"[{number(row.get('throughput_vs_fp32_onnx_low'), '.2f')}, "
                                                f"{number(row.get('throughput_vs_fp32_onnx_high'), '.2f')}]",
            "p50 latency": number(row.get("latency_p50_ms"), ".3f", " ms")}


def markdown_table(rows: Mapping[str, Mapping[str, str]], first: str = "") -> list[str]:
    """A markdown table, a row per key of `rows` (its name in the first column, headed `first`), every column
    padded to its widest cell and numbers right-aligned, so that it reads as a table in plain text too."""
    columns = list(dict.fromkeys(column for row in rows.values() for column in row))
    cells = [[first, *columns], *([name, *(row.get(column, "") for column in columns)] for name, row in rows.items())]
    widths = [max(len(line[index]) for line in cells) for index in range(len(cells[0]))]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(value.ljust(width) if index == 0 else value.rjust(width)
                                 for index, (value, width) in enumerate(zip(values, widths, strict=True))) + " |"
    rule = "| " + " | ".join("-" * width if index == 0 else "-" * (width - 1) + ":"
                             for index, width in enumerate(widths)) + " |"
    return [line(cells[0]), rule, *(line(values) for values in cells[1:])]
