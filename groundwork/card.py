"""Model cards: the markdown the Model Registry shows for the registered model and for each of its versions, so
that whoever opens the MLflow UI (or calls `MlflowClient.get_model_version`) reads what a version is, what it
was trained and scored on, why it was registered, what the gate decided, and where it came from."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from groundwork.data.canvas import IMAGE_SIDE
from groundwork.params import Params
from groundwork.tracking.registry import CHAMPION, GateDecision
from groundwork.tracking.runs import git_tags

SCORE_COLUMNS = ("accuracy", "accuracy_low", "accuracy_high", "f1", "vs_fp32_loss_upper_points", "vs_fp32_p_value",
                 "bytes", "throughput_vs_fp32_onnx", "latency_p50_ms")


def input_contract(params: Params) -> str:
    """What the registered models take and answer, in words (groundwork.serving.classifier has the details)."""
    target = params.ingest.target
    return (f"images as a client has them: arrays of any size and range ((H, W), (N, H, W), (N, H, W, 3) or "
            f"(N, 1, H, W); 0..1, 0..255 or stretched over their own range), or PNG / JPEG files, base64 in JSON "
            f"(`{{\"inputs\": [\"iVBOR...\"]}}`). Inside the model each becomes the training data's format: gray, "
            f"light ink on black (a light background is inverted), an image other than {IMAGE_SIDE}x{IMAGE_SIDE} "
            f"cropped to its ink and its longer side resized to {target.size} px (aspect kept), centred on "
            f"{IMAGE_SIDE}x{IMAGE_SIDE}: `groundwork.data.canvas.to_source_format`, the function ingest uses. "
            "**Output**: per image its `class` (0..9) and `probabilities` (one per class). A request it cannot "
            "read gets HTTP 400 with the reason.")


def registered_model_description(params: Params) -> str:
    """The registered model's own description: what its versions are and how one becomes the champion."""
    return "\n".join([
        "Digit classifiers from the groundwork pipeline: a CNN pretrained on the source digits, transferred to "
        "the target digits' label budget, then compressed. The `evaluate` stage registers, per pipeline run, the "
        "variant its selection rule picks (the best on a declared objective of those within an accuracy margin of "
        f"fp32), and the gate moves the `{CHAMPION}` alias to it only when, on images neither learnt from, it is "
        "significantly more accurate than the champion, or no worse within the margin and faster beyond noise; the "
        "adaptive loop registers challengers fine-tuned on newly labelled data. Each version's description is "
        "its card: data, scores, the gate's decision, lineage.",
        "",
        f"**Input**: {input_contract(params)}",
    ])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str], marked: str) -> list[str]:
    lines = ["| | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for name, row in rows.items():
        label = f"**{name}** (this version)" if name == marked else name
        lines.append(f"| {label} | " + " | ".join(_cell(row.get(column, "")) for column in columns) + " |")
    return lines


def lineage(root: Path, stages: Sequence[str]) -> dict[str, str]:
    """The git commit (and whether the work tree differed from it), and each of `stages`' output hashes as
    `dvc.lock` in `root` records them (none when DVC has not run them)."""
    lock = root / "dvc.lock"
    recorded = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.exists() else {}
    git = {key: value for key, value in git_tags(root).items() if key in ("git_commit", "git_dirty")}
    return {**git, **{f"{stage}: {out['path']}": out.get("md5", "") for stage in stages
                      for out in recorded.get(stage, {}).get("outs", [])}}


def version_card(*, title: str, params: Params, trained_on: Sequence[str], scores: Mapping[str, Mapping[str, Any]],
                 columns: Sequence[str], registered: str, decision: GateDecision, lineage: Mapping[str, str],
                 selection: tuple[str, Mapping[str, str]] | None = None) -> str:
    """A version's card: `trained_on` (lines on the data), `scores` (a row per variant or model, the `registered`
    one marked; `columns` of them), the selection rule and why each variant won or lost (`selection`), the gate's
    decision and
    reason, the input contract and `lineage`."""
    verdict = f"promoted to `{CHAMPION}`" if decision.promote else f"not promoted (`{CHAMPION}` kept)"
    chosen = [] if selection is None else [
        f"**Selection**: {selection[0]}.", "",
        *(f"- `{name}`: {why}" for name, why in selection[1].items()), ""]
    return "\n".join([
        f"### {title}",
        "",
        "**Trained on**",
        "",
        *(f"- {line}" for line in trained_on),
        "",
        "**Scores**",
        "",
        *_table(scores, columns, registered),
        "",
        *chosen,
        f"**Gate**: {verdict}. {decision.reason}",
        "",
        f"**Input**: {input_contract(params)}",
        "",
        "**Lineage**",
        "",
        *(f"- {name}: `{value}`" for name, value in lineage.items()),
    ])


def training_data(params: Params, digests: Mapping[str, str]) -> list[str]:
    """The card's lines on the data: each side's dataset and size as params set them, with its content digest."""
    ingest = params.ingest
    budget = ("every labelled image" if ingest.labels_per_class is None
              else f"{ingest.labels_per_class} labelled images per class")
    lines = [f"source (pretraining): `{ingest.source.dataset}`, up to "
             f"{ingest.source_samples if ingest.source_samples is not None else 'all'} images",
             f"target (transfer, compression): `{ingest.target.dataset}`, {budget}"]
    return [*lines, *(f"{name} data digest: `{digest}`" for name, digest in digests.items())]
