"""Model cards: the markdown the Model Registry shows for the registered model and for each of its versions, so
that whoever opens the MLflow UI (or calls `MlflowClient.get_model_version`) reads what a version is, what it
was trained and scored on, why it was registered, what the gate decided, and where it came from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from groundwork.data.canvas import IMAGE_SIDE
from groundwork.evaluation.variant_table import markdown_table
from groundwork.params import Params
from groundwork.tracking.registry import CHAMPION, GateDecision
from groundwork.tracking.runs import git_tags

# why the served signature has no input schema (groundwork.serving.package.signature), said on every card
NO_INPUT_SCHEMA = ("with one, MLflow would refuse every request not shaped as that schema says, and the classifier "
                   "takes the several shapes above and checks each itself. The input example shows a request.")


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


def lineage(root: Path, stages: Sequence[str]) -> dict[str, str]:
    """The git commit (and whether the work tree differed from it), and each of `stages`' output hashes as
    `dvc.lock` in `root` records them (none when DVC has not run them)."""
    lock = root / "dvc.lock"
    recorded = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.exists() else {}
    git = {key: value for key, value in git_tags(root).items() if key in ("git_commit", "git_dirty")}
    return {**git, **{f"{stage}: {out['path']}": out.get("md5", "") for stage in stages
                      for out in recorded.get(stage, {}).get("outs", [])}}


def version_card(*, title: str, params: Params, trained_on: Sequence[str], scores: Mapping[str, Mapping[str, str]],
                 registered: str, decision: GateDecision, lineage: Mapping[str, str],
                 selection: tuple[str, Mapping[str, str]] | None = None) -> str:
    """A version's card: `trained_on` (lines on the data), `scores` (a row of formatted cells per variant or
    model, the `registered` one marked: groundwork.evaluation.variant_table), the selection rule and why each
    variant won or lost (`selection`), the gate's decision and reason, the input contract and `lineage`."""
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
        *markdown_table({f"**{name}** (this version)" if name == registered else name: row
                         for name, row in scores.items()}),
        "",
        *chosen,
        f"**Gate**: {verdict}. {decision.reason}",
        "",
        f"**Input**: {input_contract(params)}",
        "",
        f"The schema on this page lists outputs only, no inputs: {NO_INPUT_SCHEMA}",
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
