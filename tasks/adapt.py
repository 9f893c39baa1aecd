"""adapt: once enough labels the champion has not learnt came back (adaptive.adapt.min_labels), the champion's
fp32 weights (the pointer folder models/champion, groundwork.adaptive.champion) fine-tuned on them plus a replay
buffer of earlier target, source and loop-labelled images, served in the champion's own form (its pruning, its
precision), registered as the `challenger`, and promoted to `champion` only if it beats the champion on the new
distribution's labelled holdout and forgets no more than allowed on the original target test split. Each version
records the fp32 weights behind it and the images it learnt, so the next iteration learns from the champion and
only the labels it lacks; the same labels and pointer give the same challenger (`dvc repro` replays it). Nothing
reaches the registry before every file is written."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundwork.adaptive.champion import read_pointer
from groundwork.adaptive.continual import adapted, replay_buffer
from groundwork.adaptive.labels import Label, arrivals_and_labels
from groundwork.adaptive.power import POWER_GAIN_POINTS, promotion_power
from groundwork.card import lineage, registered_model_description, training_data, version_card
from groundwork.compression.export import export_onnx, onnx_logits, onnx_session, quantize_int8
from groundwork.compression.names import QUANTIZED, SPARSE
from groundwork.data.atomic import write_json
from groundwork.data.datasets import Split, load_dataset, to_float
from groundwork.entrypoint import stage_cli
from groundwork.evaluation.champion import image_ids, learnt_from
from groundwork.evaluation.gate import decide_challenger
from groundwork.evaluation.statistics import paired_test
from groundwork.evaluation.variant_table import percent
from groundwork.models.checkpoint import load_model, save_checkpoint
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params
from groundwork.serving.package import log_served_model, served_contract
from groundwork.tracking.registry_gate import Predict
from groundwork.tracking.runs import NullTracker, Tracker
from groundwork.training.distributed import resolve_device
from groundwork.training.loop import logits_of
from groundwork.training.precision import autocast_dtype

log = logging.getLogger(__name__)
MANIFEST = "challenger.json"


def labelled(given: dict[str, Label], images: dict[str, np.ndarray], purpose: str) -> Split:
    """The labelled images given for `purpose` (train or holdout), in image-id order."""
    ids = sorted(i for i, label in given.items() if label.purpose == purpose)
    if not ids:
        return Split(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64))
    return Split(np.stack([images[i] for i in ids]), np.array([given[i].label for i in ids], np.int64))


def correct(predict: Predict, split: Split) -> np.ndarray | None:
    """Which images of a labelled split `predict` gets right; None when it is empty."""
    if not len(split):
        return None
    return predict(torch.from_numpy(split.images)).argmax(1).numpy() == split.labels


def accuracy(right: np.ndarray | None) -> float | None:
    """The share of True; None for no images."""
    return None if right is None else float(right.mean())


def serve_in_form(model: DigitNet, form: str, out_dir: Path, params: Params, *, calibration: np.ndarray) -> Path:
    """The fine-tuned model as ONNX in the champion's form: fp32, or int8 calibrated on `calibration` (uint8
    images) where the form is quantized; the file to serve."""
    fp32_path = out_dir / "challenger.onnx"
    export_onnx(model, fp32_path)
    if form not in QUANTIZED:
        return fp32_path
    int8_path = out_dir / "challenger_int8.onnx"
    images = to_float(torch.from_numpy(calibration[:params.compress.calibration_images])).numpy()
    quantize_int8(fp32_path, int8_path, images, params.compress.quantization)
    return int8_path


def run(params: Params, *, champion: Path, target: Path, source: Path, incoming: Path, labels: Path, out_dir: Path,
        tracker: Tracker | None = None) -> dict[str, Any]:
    """Adapt when the labels allow, write the challenger and its manifest, gate it; return scores and decision."""
    tracker = tracker or NullTracker()
    cfg = params.adaptive.adapt
    pointer = read_pointer(champion)
    _, images, given = arrivals_and_labels(params, incoming, labels)
    known = {image_id for image_id, content in zip(given, image_ids(np.stack([images[i] for i in given])), strict=True)
             if content in pointer.labels} if given else set()
    new = labelled({i: label for i, label in given.items() if i not in known}, images, "train")
    learnt_labels = labelled({i: label for i, label in given.items() if i in known}, images, "train")
    holdout = labelled(given, images, "holdout")
    counts = {"train_labels": len(new), "learnt_labels": len(learnt_labels), "holdout_labels": len(holdout)}
    if len(new) < cfg.min_labels:
        reason = (f"{len(new)} training label(s) that {pointer.model} version {pointer.version} has not learnt: the "
                  f"adapt path waits for adaptive.adapt.min_labels={cfg.min_labels}")
        log.info("not adapting: %s", reason)
        write_json(out_dir / MANIFEST, {"adapted": False, "reason": reason, **counts})
        return {"adapted": False, "reason": reason, **counts}

    base, _ = load_model(pointer.weights)
    target_data, target_digest = load_dataset(target, splits=("train", "val", "test", "pool"))
    source_data, source_digest = load_dataset(source, splits=("train",))
    tracker.log_dataset("target", target, target_digest, context="replay")
    tracker.log_dataset("source", source, source_digest, context="replay")
    replay = replay_buffer(target_data["train"], source_data["train"], cfg, seed=params.seed,
                           learnt_labels=learnt_labels)
    log.info("adapting %s version %s (%s) on %d new label(s) and %d replayed image(s)", pointer.model,
             pointer.version, pointer.form, len(new), len(replay))
    device = resolve_device(params.device)
    challenger, history = adapted(base, new, replay, cfg, params.augment, device=device, seed=params.seed,
                                  precision=autocast_dtype(params.precision, device), sparse=pointer.form in SPARSE)
    served = serve_in_form(challenger, pointer.form, out_dir, params,
                           calibration=np.concatenate([new.images, target_data["val"].images]))
    session = onnx_session(served)
    cpu = torch.device("cpu")
    registered = tracker.champion_predictor(params.evaluate.registered_model)
    incumbent_name = "registered champion" if registered is not None else f"{pointer.weights} (no registry)"
    incumbent = registered or (lambda x: logits_of(base, x, device=cpu))
    ours = {name: correct(lambda x: onnx_logits(session, x), split)
            for name, split in (("holdout", holdout), ("original", target_data["test"]))}
    theirs = {name: correct(incumbent, split) for name, split in (("holdout", holdout), ("original",
                                                                                         target_data["test"]))}
    challenger_scores = {f"{name}_accuracy": accuracy(right) for name, right in ours.items()}
    incumbent_scores = {f"{name}_accuracy": accuracy(right) for name, right in theirs.items()}
    holdout_test = None if ours["holdout"] is None else paired_test(theirs["holdout"], ours["holdout"])
    decision = decide_challenger(holdout_test, paired_test(theirs["original"], ours["original"]),
                                 max_forgetting=cfg.max_forgetting, champion_version=None,
                                 challenger_holdout=challenger_scores["holdout_accuracy"])
    power = promotion_power(len(holdout), gain_points=POWER_GAIN_POINTS)
    scores = {"challenger": challenger_scores, "incumbent": incumbent_scores, "incumbent_model": incumbent_name,
              "gate": dict(decision.evidence), f"power_at_{POWER_GAIN_POINTS}_points": power}
    save_checkpoint(out_dir / "challenger.pt", challenger, stage="adapt",
                    params=params.model_dump(mode="json"), metrics={k: v for k, v in challenger_scores.items()
                                                                    if v is not None})
    write_json(out_dir / MANIFEST, {"adapted": True, **counts, "replayed": len(replay), **scores,
                                    "promote": decision.promote, "reason": decision.reason})
    log.info("challenger: %s", decision.reason)
    registry: dict[str, Any] = {"registered": False}
    model_id = log_served_model(tracker, served, "challenger", served_contract(params.ingest.target))
    version = None if model_id is None else tracker.register_model(model_id, params.evaluate.registered_model)
    if model_id is not None and version is not None:
        # the gate's metric for a later candidate: accuracy on the target's test split, as evaluate scores it
        tracker.log_model_metrics(model_id, {"accuracy": challenger_scores["original_accuracy"]}, dataset="target")
        if challenger_scores["holdout_accuracy"] is not None:
            tracker.log_model_metrics(model_id, {"holdout_accuracy": challenger_scores["holdout_accuracy"]},
                                      dataset=None)
        tracker.challenge(params.evaluate.registered_model, version, decision)
        # what a later gate must not score it on, and what the next iteration need not teach it: the champion's
        # images and the new labels; the weights the next iteration fine-tunes if this one is promoted
        tracker.record_learnt_from(params.evaluate.registered_model, version,
                                   sorted({*pointer.labels, *learnt_from(target_data), *image_ids(new.images)}))
        tracker.record_weights(params.evaluate.registered_model, version, out_dir / "challenger.pt",
                               form=pointer.form, labels=sorted({*pointer.labels, *image_ids(new.images)}))
        card = version_card(
            title=f"{params.evaluate.registered_model} version {version}: a challenger from the adaptive loop",
            params=params, scores={name: {"holdout accuracy": percent(row["holdout_accuracy"]),
                                          "original test accuracy": percent(row["original_accuracy"])}
                                   for name, row in (("challenger", challenger_scores),
                                                     (incumbent_name, incumbent_scores))},
            trained_on=[f"fine-tuned from version {pointer.version} (`{pointer.form}`) on {len(new)} new label(s) "
                        f"and {len(replay)} replayed image(s) (target and source training splits, earlier labels), "
                        f"served as `{pointer.form}` is",
                        *training_data(params, {"target": target_digest, "source": source_digest})],
            registered="challenger", decision=decision,
            lineage=lineage(Path.cwd(), ("transfer", "compress")))
        tracker.describe(params.evaluate.registered_model, version, registered_model_description(params), card)
        registry = {"registered": True, "model": params.evaluate.registered_model, "version": int(version)}
    return {"adapted": True, **counts, "replayed": len(replay), "epochs": len(history), **scores,
            "forgetting": incumbent_scores["original_accuracy"] - challenger_scores["original_accuracy"],
            "promoted": decision.promote, "reason": decision.reason, "registry": registry}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (the DVC stage's cmd)."""
    return stage_cli("adapt", __doc__, run, argv, paths={
        "champion": "the champion's pointer folder (groundwork.adaptive.champion): its fp32 weights, form, learnt ids",
        "target": "target dataset (.npz) from ingest: replay, calibration and the original test split",
        "source": "source dataset (.npz) from ingest: replay",
        "incoming": "folder of arrived batches",
        "labels": "folder of labels given back (.csv)",
        "out_dir": "folder for the challenger (checkpoint, ONNX fp32 and int8, manifest) to write",
    })


if __name__ == "__main__":
    sys.exit(main())
