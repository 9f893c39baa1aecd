"""The adaptive loop's parts: shifts, drift tests (calibrated under no shift, powerful under one), arriving batches
(digests, repeats, files set aside), labels CSVs (every bad row refused by name), uncertainty sampling, the
challenger gate, and the three stages on the tiny project (stream, monitor, ask, annotate, adapt)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import binom
from torch import nn

from groundwork.adaptive.champion import ChampionError, read_pointer, save_pointer
from groundwork.adaptive.drift import check_batch, ks_softmax, mmd_permutation
from groundwork.adaptive.incoming import batch_digest, read_arrivals
from groundwork.adaptive.labels import arrivals_and_labels, read_labels
from groundwork.adaptive.power import promotion_power
from groundwork.adaptive.selection import entropy, informativeness, pick
from groundwork.adaptive.shifts import apply_shift, class_prior_weights
from groundwork.adaptive.simulate import answer_queue, unseen_images, write_stream
from groundwork.data.datasets import load_dataset
from groundwork.errors import CheckpointError, DataError
from groundwork.evaluation.champion import image_ids
from groundwork.models.checkpoint import load_model
from groundwork.params import Params, ParamsError, parse_params
from groundwork.params.adaptive import MonitorParams
from groundwork.project import tiny_params_dict
from groundwork.training.loop import loss_and_accuracy
from tasks import adapt, ask, monitor

MONITOR = MonitorParams(alpha=0.05, permutations=100, alarm_on="either", min_batch=5)


def digits(count: int, seed: int = 0) -> np.ndarray:
    """uint8 images (count, 28, 28) with a bright bar somewhere in the middle, as stand-ins for strokes."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), np.uint8)
    for image, row in zip(images, rng.integers(8, 20, count), strict=True):
        image[row:row + 3, 6:22] = 255
    return images


# --- shifts -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "strength"), [("rotation", 30.0), ("thickness", 1.0), ("noise", 0.1),
                                                ("contrast", 0.7)])
def test_each_image_shift_changes_images_and_keeps_their_format(name: str, strength: float) -> None:
    images = torch.from_numpy(digits(8))
    shifted = apply_shift(name, strength, images, torch.Generator().manual_seed(0))
    assert shifted.dtype == torch.uint8 and shifted.shape == images.shape
    assert (shifted != images).any(dim=(1, 2)).all(), f"{name} left an image unchanged"
    again = apply_shift(name, strength, images, torch.Generator().manual_seed(0))
    assert torch.equal(shifted, again), "the same seed gives the same shift"


def test_thickness_widens_strokes_and_contrast_fades_them() -> None:
    images = torch.from_numpy(digits(4))
    generator = torch.Generator().manual_seed(0)
    assert (apply_shift("thickness", 1.0, images, generator) > 0).sum() > (images > 0).sum()
    faded = apply_shift("contrast", 0.5, images, generator)
    assert faded.max() < images.max() and faded.min() > images.min()
    assert torch.equal(apply_shift("none", 0.0, images, generator), images)


def test_class_prior_weights_put_the_asked_share_on_the_low_classes() -> None:
    labels = np.repeat(np.arange(10), 7)
    weights = class_prior_weights(labels, 0.9)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[labels < 5].sum() == pytest.approx(0.9)


def test_a_shift_strength_out_of_range_names_the_key() -> None:
    with pytest.raises(ParamsError, match=r"adaptive.stream.*strength 400.0 is outside \[0.0, 180.0\]"):
        parse_params(tiny_params_dict(adaptive={"stream": {"shift": "rotation", "strength": 400}}))


# --- drift tests --------------------------------------------------------------------------------------------

def softmax_sample(count: int, rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    logits = rng.normal(size=(count, 10)) + np.eye(10)[rng.integers(0, 10, count)] * 3
    logits[:, 0] += shift
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


# Telling a false-alarm rate of alpha from 2 x alpha needs about alpha * trials >= 56 expected alarms at 0.001 error
# each way: at alpha 0.05 that is 1,100 trials (a minute here), at 0.2 it is 300.
NULL_ALPHA, NULL_TRIALS = 0.2, 300


def test_drift_tests_hold_their_level_without_a_shift_and_detect_one() -> None:
    """Under no shift each test, and the either-test alarm, rejects at most at alpha (an exact binomial bound that
    2 x alpha exceeds); a moderate shift of outputs and embeddings is caught."""
    rng = np.random.default_rng(0)
    # outputs and embeddings made once; each trial draws a reference and a batch from them without replacement
    pool = (softmax_sample(6000, rng), rng.normal(size=(6000, 8)))
    cfg = MONITOR.model_copy(update={"alpha": NULL_ALPHA})
    alarms = {"ks": 0, "mmd": 0, "either": 0}
    for trial in range(NULL_TRIALS):
        drawn = rng.choice(len(pool[0]), 400, replace=False)
        reference, batch = ((pool[0][rows], pool[1][rows]) for rows in (drawn[:300], drawn[300:]))
        result = check_batch(reference, batch, cfg, seed=trial)
        alarms["ks"] += result.ks_drift
        alarms["mmd"] += result.mmd_drift
        alarms["either"] += result.alarm
    bound = binom.isf(0.001, NULL_TRIALS, NULL_ALPHA)  # P(more alarms than this | a rate of alpha) < 0.001
    assert binom.cdf(bound, NULL_TRIALS, 2 * NULL_ALPHA) < 0.001, "the design tells alpha from 2 x alpha"
    assert max(alarms.values()) <= bound, f"false alarms in {NULL_TRIALS} trials at alpha {NULL_ALPHA}: {alarms}"
    reference = (softmax_sample(300, rng), rng.normal(size=(300, 8)))
    shifted = [check_batch(reference, (softmax_sample(100, rng, shift=1.5), rng.normal(size=(100, 8)) + 0.5),
                           MONITOR, seed=trial) for trial in range(10)]
    assert all(result.alarm and result.ks_drift and result.mmd_drift for result in shifted)
    assert "KS on class 0's softmax output" in shifted[0].reason and "MMD on embeddings" in shifted[0].reason


def test_the_ks_p_value_is_bonferroni_corrected_and_mmd_counts_the_observed_split() -> None:
    rng = np.random.default_rng(1)
    same = softmax_sample(200, rng)
    corrected, _ = ks_softmax(same, same)
    assert corrected == 1.0
    mmd, p_value = mmd_permutation(rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) + 5, permutations=99, seed=0)
    assert mmd > 0 and p_value == pytest.approx(1 / 100), "the observed split is one of the 100 counted"


def test_alarm_on_both_needs_both_tests() -> None:
    rng = np.random.default_rng(2)
    reference = (softmax_sample(300, rng), rng.normal(size=(300, 8)))
    only_outputs = (softmax_sample(100, rng, shift=1.5), rng.normal(size=(100, 8)))
    both = MONITOR.model_copy(update={"alarm_on": "both"})
    result = check_batch(reference, only_outputs, both, seed=0)
    assert result.ks_drift and not result.mmd_drift and not result.alarm
    assert "not enough for an alarm (alarm_on=both" in result.reason


# --- arriving batches ---------------------------------------------------------------------------------------

def test_arrivals_count_a_repeated_batch_once_and_set_bad_files_aside(tmp_path: Path,
                                                                     tiny_params: Params) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    images = digits(30)
    np.savez(incoming / "a.npz", images=images)
    np.savez(incoming / "b-again.npz", images=images)  # the same images under another name
    np.savez(incoming / "c-large.npz", images=np.kron(digits(30, seed=1), np.ones((2, 2), np.uint8)) / 255.0)
    np.savez(incoming / "d-wrong-key.npz", pixels=images)
    (incoming / "e-corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(incoming / "f-few.npz", images=digits(3))
    np.savez(incoming / "g-not-images.npz", images=np.zeros(5))
    photos = incoming / "h-photos"
    photos.mkdir()
    for index, image in enumerate(digits(6, seed=2)):
        Image.fromarray(np.stack([255 - image] * 3, -1)).resize((64, 64)).save(photos / f"{index}.png")
    arrivals = read_arrivals(incoming, tiny_params.ingest.target, min_batch=5)
    assert [batch.name for batch in arrivals.batches] == ["a.npz", "c-large.npz", "h-photos"]
    assert arrivals.duplicates == {"b-again.npz": "a.npz"}
    assert set(arrivals.set_aside) == {"d-wrong-key.npz", "e-corrupt.npz", "f-few.npz", "g-not-images.npz"}
    assert "no 'images' array" in arrivals.set_aside["d-wrong-key.npz"]
    assert "not a readable .npz file" in arrivals.set_aside["e-corrupt.npz"]
    assert "fewer than adaptive.monitor.min_batch (5)" in arrivals.set_aside["f-few.npz"]
    assert "expected images" in arrivals.set_aside["g-not-images.npz"]
    for batch in arrivals.batches:  # whatever came in, what goes on is in the models' format
        assert batch.images.dtype == np.uint8 and batch.images.shape[1:] == (28, 28)
        assert batch.digest == batch_digest(batch.images)
    assert arrivals.batches[0].image_ids()[3] == f"{arrivals.batches[0].digest[:12]}-00003"


def test_no_incoming_folder_means_no_batches(tmp_path: Path, tiny_params: Params) -> None:
    arrivals = read_arrivals(tmp_path / "missing", tiny_params.ingest.target, min_batch=5)
    assert arrivals.batches == [] and arrivals.set_aside == {}


# --- labels -------------------------------------------------------------------------------------------------

KNOWN = {"abc-00000", "abc-00001", "abc-00002"}


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_labels_are_read_with_their_purpose_and_unlabelled_rows_skipped(tmp_path: Path) -> None:
    write_csv(tmp_path / "queue.csv", [["image_id", "label", "purpose", "predicted"],
                                       ["abc-00000", "3", "holdout", "5"], ["abc-00001", "", "train", "2"],
                                       ["abc-00002", "7", "", "7"]])
    write_csv(tmp_path / "corrections.csv", [["image_id", "label"], ["abc-00002", "7"]])  # the same label again
    labels = read_labels(tmp_path, KNOWN)
    assert {i: (label.label, label.purpose) for i, label in labels.items()} == {"abc-00000": (3, "holdout"),
                                                                               "abc-00002": (7, "train")}


@pytest.mark.parametrize(("rows", "message"), [
    ([["image_id", "label"], ["abc-00000", "3"], ["zzz-00009", "2"]], r"b.csv:3: unknown image id 'zzz-00009'"),
    ([["image_id", "label"], ["abc-00000", "10"]], r"b.csv:2: label 10 is outside the classes 0..9"),
    ([["image_id", "label"], ["abc-00000", "one"]], r"b.csv:2: label 'one' is not a class number"),
    ([["image_id", "label"], ["abc-00000", "4"]], r"b.csv:2: image abc-00000 labelled 4, but .*a.csv:2 labelled it 3"),
    ([["image_id", "label"], ["abc-00001", "4", "extra"]], r"b.csv:2: malformed row"),
    ([["image_id", "label"], ["abc-00001"]], r"b.csv:2: malformed row"),
    ([["image", "label"], ["abc-00001", "4"]], r"b.csv: missing column\(s\) \['image_id'\]"),
    ([["image_id", "label", "purpose"], ["abc-00001", "4", "test"]], r"b.csv:2: purpose 'test' must be one of"),
])
def test_a_bad_labels_row_is_refused_by_file_and_row(tmp_path: Path, rows: list[list[str]], message: str) -> None:
    write_csv(tmp_path / "a.csv", [["image_id", "label"], ["abc-00000", "3"]])
    write_csv(tmp_path / "b.csv", rows)
    with pytest.raises(DataError, match=message):
        read_labels(tmp_path, KNOWN)


# --- selection ----------------------------------------------------------------------------------------------

class FixedLogits(nn.Module):
    """A model whose logits for image i are row i of a table (found through the image's first pixel)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.dropout = nn.Dropout(0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        index = (images[:, 0, 0, 0] * 255).round().long()
        return self.dropout(self.logits[index])


def test_uncertainty_sampling_picks_the_least_certain_images() -> None:
    logits = torch.tensor([[9.0, 0, 0], [1.0, 0.9, 0], [5.0, 0, 0], [0.1, 0.1, 0.1]])
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    images[:, 0, 0] = torch.arange(4, dtype=torch.uint8)
    model = FixedLogits(logits)
    generator = torch.Generator().manual_seed(0)
    by_entropy = informativeness("entropy", model, images, mc_samples=2, generator=generator)
    assert by_entropy.allclose(entropy(logits.softmax(-1)))
    assert pick(by_entropy, 2).tolist() == [3, 1]
    assert pick(informativeness("margin", model, images, mc_samples=2, generator=generator), 2).tolist() == [3, 1]
    bald = informativeness("bald", model, images, mc_samples=30, generator=generator)
    assert bald.shape == (4,) and (bald >= -1e-6).all()
    assert sorted(pick(informativeness("random", model, images, mc_samples=2, generator=generator), 4)) == [0, 1, 2, 3]
    assert pick(torch.tensor([1.0, 1.0, 1.0]), 2).tolist() == [0, 1], "ties go to the earlier image"


# --- the challenger gate ------------------------------------------------------------------------------------

# (the challenger gate's rule is tested in test_statistics.py, on paired outcomes whose truth is known)


# --- the stages on the tiny project -------------------------------------------------------------------------

@pytest.fixture
def loop_project(tmp_path: Path, tiny_params: Params, tiny_data: dict[str, Path]) -> dict[str, Path]:
    """The tiny stream written into an incoming folder, with the paths the loop's stages use."""
    paths = {"incoming": tmp_path / "incoming", "truth": tmp_path / "truth", "labels": tmp_path / "labels",
             "drift": tmp_path / "drift.csv", "plot": tmp_path / "drift.png", "queue": tmp_path / "queue",
             "challenger": tmp_path / "challenger", "champion": tmp_path / "champion"}
    written = write_stream(tiny_params, target=tiny_data["target"], incoming=paths["incoming"], truth=paths["truth"])
    assert [p.name for p in written] == ["stream-000.npz", "stream-001.npz", "stream-002.npz"]
    return paths


def test_the_stream_uses_only_images_whose_labels_the_champion_never_saw(tiny_data: dict[str, Path],
                                                                         tiny_params: Params, tmp_path: Path) -> None:
    data, _ = load_dataset(tiny_data["target"], splits=("train", "pool", "test"))
    unseen = unseen_images(tiny_data["target"])
    seen = {image.tobytes() for split in ("train", "test") for image in data[split].images}
    assert len(unseen) == len(data["pool"]) - len(data["train"])
    assert not any(image.tobytes() in seen for image in unseen.images)
    first = write_stream(tiny_params, target=tiny_data["target"], incoming=tmp_path / "in", truth=tmp_path / "t",
                         upto=2)
    rest = write_stream(tiny_params, target=tiny_data["target"], incoming=tmp_path / "in", truth=tmp_path / "t")
    assert [p.name for p in first] == ["stream-000.npz", "stream-001.npz"] and [p.name for p in rest] == [
        "stream-002.npz"], "batches already delivered are the same and are not written again"


def test_monitor_ask_annotate_adapt_on_the_tiny_stream(tiny_params: Params, tiny_data: dict[str, Path],
                                                       tiny_transferred: dict[str, Any],
                                                       loop_project: dict[str, Path]) -> None:
    paths, model = loop_project, tiny_transferred["model"]
    watched = monitor.run(tiny_params, model=model, target=tiny_data["target"], incoming=paths["incoming"],
                          table_out=paths["drift"], plot_out=paths["plot"])
    table = pd.read_csv(paths["drift"])
    assert watched["batches"] == 3 and len(table) == 3 and paths["plot"].stat().st_size > 0
    assert not table["alarm"][0] and table["alarm"][1:].all(), table[["file", "ks_p", "mmd_p", "reason"]]
    assert watched["latest_alarm"] and "MMD on embeddings" in watched["latest_reason"]

    asked = ask.run(tiny_params, model=model, incoming=paths["incoming"], labels=paths["labels"],
                    drift=paths["drift"], queue_dir=paths["queue"])
    queue = pd.read_csv(paths["queue"] / "queue.csv", dtype={"label": "Int64"})
    cfg = tiny_params.adaptive.ask
    assert asked["queued"] == len(queue) == cfg.holdout_per_iteration + cfg.queue_size
    assert (queue["purpose"] == "holdout").sum() == cfg.holdout_per_iteration and queue["label"].isna().all()
    alarmed = set(table.loc[table["alarm"], "batch"])
    assert all(image_id.split("-")[0] in alarmed for image_id in queue["image_id"]), "only alarmed batches are asked"
    assert all((paths["queue"] / file).exists() for file in queue["file"]) and (paths["queue"] / "sheet.png").exists()
    train_scores = queue.loc[queue["purpose"] == "train", "score"].tolist()
    assert train_scores == sorted(train_scores, reverse=True), "the most informative first"

    answers = answer_queue(paths["queue"] / "queue.csv", paths["truth"], paths["labels"])
    assert answers is not None and answers.parent == paths["labels"]
    again = ask.run(tiny_params, model=model, incoming=paths["incoming"], labels=paths["labels"],
                    drift=paths["drift"], queue_dir=paths["queue"])
    requeued = pd.read_csv(paths["queue"] / "queue.csv")
    assert again["labels_given"] == len(queue) and not set(requeued["image_id"]) & set(queue["image_id"])
    assert (requeued["purpose"] == "holdout").sum() == cfg.holdout_size - cfg.holdout_per_iteration, \
        "the holdout grows across iterations up to holdout_size"
    assert answer_queue(paths["queue"] / "queue.csv", paths["truth"], paths["labels"]) is not None
    third = ask.run(tiny_params, model=model, incoming=paths["incoming"], labels=paths["labels"],
                    drift=paths["drift"], queue_dir=paths["queue"])
    assert third["holdout_queued"] == 0, "the holdout is full: only training labels are asked"

    save_pointer(paths["champion"], model="digits", version="1", form="int8", weights=model, labels=())
    adapted = adapt.run(tiny_params, champion=paths["champion"], target=tiny_data["target"],
                        source=tiny_data["source"], incoming=paths["incoming"], labels=paths["labels"],
                        out_dir=paths["challenger"])
    assert adapted["adapted"] and adapted["train_labels"] == 2 * cfg.queue_size and adapted["learnt_labels"] == 0
    assert adapted["holdout_labels"] == cfg.holdout_size and adapted["replayed"] == 40
    assert adapted["registry"] == {"registered": False}, "no tracking: nothing registered"
    manifest = json.loads((paths["challenger"] / "challenger.json").read_text())
    assert manifest["promote"] == adapted["promoted"] and manifest["reason"] == adapted["reason"]
    assert {p.name for p in paths["challenger"].iterdir()} == {"challenger.json", "challenger.pt", "challenger.onnx",
                                                               "challenger_int8.onnx"}, "an int8 champion's form"
    # the gate's paired test on the holdout, with the power such a holdout gives
    gate = adapted["gate"]
    assert gate["test"] == "exact McNemar" and int(gate["holdout.images"]) == cfg.holdout_size
    assert int(gate["original.images"]) == len(np.load(tiny_data["target"])["test_labels"])
    assert adapted["power_at_3_points"] == pytest.approx(promotion_power(cfg.holdout_size, gain_points=3))
    # no champion registered: the incumbent is the model adapted from, scored as training scores it
    test = load_dataset(tiny_data["target"], splits=("test",))[0]["test"]
    incumbent = loss_and_accuracy(load_model(model)[0], *test.tensors(), device=torch.device("cpu"))["accuracy"]
    assert adapted["incumbent"]["original_accuracy"] == pytest.approx(incumbent)
    assert adapted["forgetting"] == pytest.approx(incumbent - adapted["challenger"]["original_accuracy"])


def test_adapt_waits_for_enough_labels_and_refuses_a_bad_labels_file(tiny_params: Params, tiny_data: dict[str, Path],
                                                                     tiny_transferred: dict[str, Any],
                                                                     loop_project: dict[str, Path]) -> None:
    paths = loop_project
    save_pointer(paths["champion"], model="digits", version="1", form="int8", weights=tiny_transferred["model"],
                 labels=())
    arguments = {"champion": paths["champion"], "target": tiny_data["target"], "source": tiny_data["source"],
                 "incoming": paths["incoming"], "labels": paths["labels"], "out_dir": paths["challenger"]}
    waiting = adapt.run(tiny_params, **arguments)
    assert not waiting["adapted"] and "waits for adaptive.adapt.min_labels=10" in waiting["reason"]
    assert not (paths["challenger"] / "challenger.pt").exists()
    first_image = f"{batch_digest(np.load(paths['incoming'] / 'stream-001.npz')['images'])[:12]}-00000"
    write_csv(paths["labels"] / "mine.csv", [["image_id", "label"], [first_image, "12"]])
    with pytest.raises(DataError, match=r"mine.csv:2: label 12 is outside the classes"):
        adapt.run(tiny_params, **{**arguments, "out_dir": paths["challenger"] / "second"})
    assert not (paths["challenger"] / "second").exists(), "nothing from a refused labels file is applied"


def labelled_stream(params: Params, paths: dict[str, Path], model: Path) -> None:
    """Monitor and ask on the tiny stream, and the queue answered with the stream's true labels."""
    monitor.run(params, model=model, target=paths["target"], incoming=paths["incoming"], table_out=paths["drift"],
                plot_out=paths["plot"])
    ask.run(params, model=model, incoming=paths["incoming"], labels=paths["labels"], drift=paths["drift"],
            queue_dir=paths["queue"])
    assert answer_queue(paths["queue"] / "queue.csv", paths["truth"], paths["labels"]) is not None


def test_adapt_learns_only_the_labels_the_champion_lacks_in_the_champion_s_form(
        tiny_params: Params, tiny_data: dict[str, Path], tiny_compressed: dict[str, Any],
        loop_project: dict[str, Path]) -> None:
    """A pruned champion gives a pruned fp32 challenger (its zeros kept, no int8 file); labels the champion already
    learnt are replayed, not learnt again, and when none is new the adapt path waits."""
    paths = {**loop_project, "target": tiny_data["target"]}
    pruned = tiny_compressed["dir"] / "pruned.pt"
    labelled_stream(tiny_params, paths, pruned)
    arguments = {"target": tiny_data["target"], "source": tiny_data["source"], "incoming": paths["incoming"],
                 "labels": paths["labels"]}
    save_pointer(paths["champion"], model="digits", version="3", form="pruned", weights=pruned, labels=())
    adapted = adapt.run(tiny_params, champion=paths["champion"], out_dir=paths["challenger"], **arguments)
    assert adapted["adapted"] and adapted["learnt_labels"] == 0
    assert {p.name for p in paths["challenger"].iterdir()} == {"challenger.json", "challenger.pt", "challenger.onnx"}
    before = load_model(pruned)[0].state_dict()
    after = load_model(paths["challenger"] / "challenger.pt")[0].state_dict()
    zeros = [(before[key] == 0) for key in before if key.endswith("weight") and before[key].dim() > 1]
    assert sum(int(z.sum()) for z in zeros) > 0
    assert all(bool((after[key][before[key] == 0] == 0).all()) for key in before
               if key.endswith("weight") and before[key].dim() > 1), "the pruned zeros stay zero"
    assert any(not torch.equal(before[key], after[key]) for key in before), "the weights were fine-tuned"

    # the same labels, learnt by the champion: nothing new to learn, so the adapt path waits
    _, images, given = arrivals_and_labels(tiny_params, paths["incoming"], paths["labels"])
    learnt = image_ids(np.stack([images[image_id] for image_id, label in given.items() if label.purpose == "train"]))
    save_pointer(paths["champion"], model="digits", version="4", form="pruned", weights=pruned, labels=learnt)
    waiting = adapt.run(tiny_params, champion=paths["champion"], out_dir=paths["challenger"] / "again", **arguments)
    assert not waiting["adapted"] and waiting["train_labels"] == 0 and waiting["learnt_labels"] > 0
    assert "that digits version 4 has not learnt" in waiting["reason"]


def test_the_champion_pointer_refuses_a_damaged_checkpoint_and_names_missing_parts(
        tmp_path: Path, tiny_transferred: dict[str, Any]) -> None:
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint")
    folder = tmp_path / "champion"
    save_pointer(folder, model="digits", version="1", form="int8", weights=tiny_transferred["model"], labels=["b", "a"])
    with pytest.raises(CheckpointError, match=r"damaged\.pt: corrupt"):
        save_pointer(folder, model="digits", version="2", form="int8", weights=damaged, labels=())
    kept = read_pointer(folder)
    assert (kept.version, kept.form, kept.labels) == ("1", "int8", frozenset({"a", "b"})), "the pointer stayed"
    with pytest.raises(ChampionError, match="unknown form 'sparse8'"):
        save_pointer(folder, model="digits", version="2", form="sparse8", weights=tiny_transferred["model"], labels=())
    (folder / "champion.json").unlink()
    with pytest.raises(ChampionError, match=r"champion\.json: missing"):
        read_pointer(folder)


def test_ewc_holds_the_weights_an_earlier_world_needed(tiny_params: Params, tiny_data: dict[str, Path],
                                                       tiny_transferred: dict[str, Any]) -> None:
    """The penalty is zero at the anchors and grows as weights move; a fine-tune on a rotated world under a large
    EWC weight ends nearer the anchors (by the Fisher-weighted distance) than the same fine-tune without it."""
    from groundwork.adaptive.ewc import consolidate, with_consolidation
    from groundwork.training.loop import fit, supervised

    model = load_model(tiny_transferred["model"])[0]
    data = load_dataset(tiny_data["target"], splits=("train", "test"))[0]
    first = consolidate(model, *data["train"].tensors())
    assert all(bool((value >= 0).all()) for value in first.fisher.values())
    assert sum(float(value.sum()) for value in first.fisher.values()) > 0
    assert float(first.penalty(model)) == 0.0
    rotated = apply_shift("rotation", 45.0, torch.from_numpy(data["test"].images[:60]),
                          torch.Generator().manual_seed(0))
    world = (rotated, torch.from_numpy(data["test"].labels[:60]))
    cfg = tiny_params.adaptive.adapt.finetune.model_copy(update={"epochs": 3, "lr": 0.003})
    moved = {}
    for weight in (0.0, 1e4):
        learner = load_model(tiny_transferred["model"])[0]
        fit(learner, world, cfg, device=torch.device("cpu"), seed=1,
            objective=with_consolidation(supervised(), first, weight))
        moved[weight] = float(first.penalty(learner))
    assert 0 < moved[1e4] < moved[0.0] / 2, moved
    second = consolidate(model, *world, earlier=first)
    assert all(bool((second.fisher[name] >= first.fisher[name]).all()) for name in first.fisher), "online: summed"
