"""The dataset file format: round trip, digest, and a clear error naming the file for every kind of bad data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from groundwork.data.datasets import Split, digest, load_dataset, save_dataset
from groundwork.errors import DataError


def small_dataset(count: int = 12) -> dict[str, Split]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    return {"train": Split(images, np.arange(count, dtype=np.int64) % 10)}


def test_round_trip_keeps_arrays_and_digest(tmp_path: Path) -> None:
    dataset = small_dataset()
    written = save_dataset(tmp_path / "d.npz", dataset)
    loaded, read = load_dataset(tmp_path / "d.npz", splits=("train",))
    assert written == read == digest(dataset)
    np.testing.assert_array_equal(loaded["train"].images, dataset["train"].images)
    np.testing.assert_array_equal(loaded["train"].labels, dataset["train"].labels)
    assert not list(tmp_path.glob(".*tmp*")), "the temporary file must be renamed away"


def test_digest_changes_with_content() -> None:
    first, second = small_dataset(), small_dataset()
    second["train"].images[0, 0, 0] ^= 1
    assert digest(first) != digest(second)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothing\.npz: file not found"):
        load_dataset(tmp_path / "nothing.npz")


def test_truncated_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    save_dataset(path, small_dataset())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"d\.npz: corrupt or truncated"):
        load_dataset(path, splits=("train",))


def test_modified_content_fails_the_digest(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    dataset = small_dataset()
    save_dataset(path, dataset)
    stored = dict(np.load(path))
    stored["train_labels"] = np.roll(stored["train_labels"], 1)
    np.savez(path, **stored)
    with pytest.raises(DataError, match="digest mismatch"):
        load_dataset(path, splits=("train",))


@pytest.mark.parametrize(
    ("images", "labels", "problem"),
    [
        (np.zeros((4, 28, 28), np.float32), np.zeros(4, np.int64), "must be uint8"),
        (np.zeros((4, 32, 32), np.uint8), np.zeros(4, np.int64), r"shape \(N, 28, 28\)"),
        (np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 10]), r"labels must lie in 0\.\.9"),
        (np.zeros((4, 28, 28), np.uint8), np.array([0, -1, 2, 3]), r"labels must lie in 0\.\.9"),
        (np.zeros((4, 28, 28), np.uint8), np.zeros(3, np.int64), "4 images but 3 labels"),
        (np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), "is empty"),
        (np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.float64), "labels must be int64"),
    ],
)
def test_bad_arrays_are_refused_on_write_and_read(tmp_path: Path, images: np.ndarray, labels: np.ndarray,
                                                  problem: str) -> None:
    bad = {"train": Split(images, labels)}
    with pytest.raises(DataError, match=problem):
        save_dataset(tmp_path / "w.npz", bad)
    assert not (tmp_path / "w.npz").exists()
    # A file written by someone else with the same problem is refused when read, naming the file.
    np.savez(tmp_path / "r.npz", digest=np.array("x"), train_images=images, train_labels=labels)
    with pytest.raises(DataError, match=rf"r\.npz: .*{problem}"):
        load_dataset(tmp_path / "r.npz", splits=("train",))


def test_nan_pixels_cannot_reach_the_format(tmp_path: Path) -> None:
    images = np.full((4, 28, 28), np.nan, np.float32)
    with pytest.raises(DataError, match="must be uint8"):
        save_dataset(tmp_path / "nan.npz", {"train": Split(images, np.zeros(4, np.int64))})


def test_missing_split_is_named(tmp_path: Path) -> None:
    save_dataset(tmp_path / "d.npz", small_dataset())
    with pytest.raises(DataError, match=r"missing split\(s\) \['val'\]"):
        load_dataset(tmp_path / "d.npz", splits=("train", "val"))


def test_pickled_payload_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", digest=np.array("x"), train_images=np.array([object()], dtype=object))
    with pytest.raises(DataError, match=r"p\.npz: corrupt"):
        load_dataset(tmp_path / "p.npz")


def test_a_folder_written_atomically_replaces_the_old_one_whole_or_not_at_all(tmp_path: Path) -> None:
    from groundwork.data.atomic import atomic_folder

    target = tmp_path / "variants"
    target.mkdir()
    (target / "old.onnx").write_text("old")
    (tmp_path / ".variants.tmp-1").mkdir()  # left by a killed writer
    (tmp_path / ".variants.old-1").mkdir()
    with pytest.raises(RuntimeError), atomic_folder(target) as staging:
        (staging / "new.onnx").write_text("new")
        raise RuntimeError("the writer fails half-way")
    assert [p.name for p in target.iterdir()] == ["old.onnx"]
    with atomic_folder(target) as staging:
        (staging / "new.onnx").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["variants"], "no hidden folder left behind"
