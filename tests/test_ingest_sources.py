"""ingest from real datasets: tiny files in each torchvision loader's on-disk format (IDX, bz2 libsvm, CIFAR's
pickled batches, SVHN's .mat) and PNG image folders, read offline and brought to the pipeline's format."""

from __future__ import annotations

import bz2
import hashlib
import pickle
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
from PIL import Image
from torchvision import datasets

from groundwork.data import sources
from groundwork.data.canvas import LUMINANCE
from groundwork.data.corpus import build_datasets
from groundwork.data.datasets import IMAGE_SIDE, NUM_CLASSES, Dataset, load_dataset
from groundwork.errors import DataError
from groundwork.params import parse_params
from groundwork.params.data import TORCHVISION_DATASETS, DataSource
from groundwork.project import tiny_params_dict
from tasks import ingest

MNIST_FAMILY = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST", "emnist": "EMNIST"}


def side_params(side: str, **source: Any) -> Any:
    """Tiny params with one side read from a real dataset (the other stays embedded)."""
    return parse_params(tiny_params_dict(ingest={side: source}))


def ingest_files(params: Any, folder: Path) -> tuple[Dataset, Dataset]:
    """Run the stage, then read back both files it wrote, every split."""
    paths = folder / "source.npz", folder / "target.npz"
    ingest.run(params, source_out=paths[0], target_out=paths[1])
    source, _ = load_dataset(paths[0], splits=("train", "val", "test"))
    target, _ = load_dataset(paths[1], splits=("train", "pool", "val", "test"))
    for split in (*source.values(), *target.values()):
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (IMAGE_SIDE, IMAGE_SIDE)
        assert split.labels.dtype == np.int64
    return source, target


def every_image(dataset: Dataset, splits: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of the named splits, together."""
    return (np.concatenate([dataset[name].images for name in splits]),
            np.concatenate([dataset[name].labels for name in splits]))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX (SN3) file: zero, zero, type 0x08 (uint8), dimension count, big-endian sizes, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def digits(count: int, *, seed: int, side: int = IMAGE_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Distinct random uint8 images and labels 0..9 in turn."""
    images = np.random.default_rng(seed).integers(0, 256, size=(count, side, side), dtype=np.uint8)
    return images, np.arange(count, dtype=np.int64) % NUM_CLASSES


@pytest.mark.parametrize("name", sorted(MNIST_FAMILY))
def test_mnist_family_idx_files_are_read_and_combined(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "raw" / MNIST_FAMILY[name] / "raw"
    written: dict[bytes, int] = {}
    for part, count, seed in (("train", 80, 1), ("test", 40, 2)):
        images, labels = digits(count, seed=seed)
        written.update({image.tobytes(): int(label) for image, label in zip(images, labels, strict=True)})
        if name == "emnist":  # EMNIST's files hold every image transposed; ingest turns them upright
            stem = f"emnist-digits-{part}"
            images = images.transpose(0, 2, 1)
        else:
            stem = "train" if part == "train" else "t10k"
        write_idx(folder / f"{stem}-images-idx3-ubyte", images)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", labels)

    source, _ = ingest_files(side_params("source", dataset=name, root=str(tmp_path / "raw")), tmp_path)
    images, labels = every_image(source, ("train", "val", "test"))
    assert len(labels) == 120, "train and test files are combined, then split"
    assert np.bincount(labels).tolist() == [12] * NUM_CLASSES
    # 28x28 at size 28: every image is kept byte for byte, with its own label
    assert [written[image.tobytes()] for image in images] == labels.tolist()


def write_png_classes(root: Path, classes: int) -> dict[int, tuple[int, int, int]]:
    """Per class: 8 uniform RGB images 40 wide by 30 high and 2 uniform gray ones of 24x24; returns the colours."""
    colours = {label: (200, 20 + 20 * label, 10 * label) for label in range(classes)}
    for label, colour in colours.items():
        folder = root / str(label)
        folder.mkdir(parents=True)
        for index in range(8):
            Image.new("RGB", (40, 30), colour).save(folder / f"rgb{index}.png")
        for index in range(2):
            Image.new("L", (24, 24), 30 + 20 * label).save(folder / f"gray{index}.png")
    return colours


@pytest.mark.parametrize(("color", "invert"), [("luminance", False), ("mean", True)])
def test_image_folder_of_colour_images_of_other_sizes(tmp_path: Path, color: str, invert: bool) -> None:
    colours = write_png_classes(tmp_path / "photos", NUM_CLASSES)
    params = side_params("target", dataset="image_folder", root=str(tmp_path / "photos"), color=color,
                         invert=invert, size=28)
    _, target = ingest_files(params, tmp_path)
    images, labels = every_image(target, ("pool", "val", "test"))
    assert len(labels) == 100 and np.bincount(labels).tolist() == [10] * NUM_CLASSES
    weights = LUMINANCE if color == "luminance" else (1 / 3,) * 3
    letterboxed = 0
    for image, label in zip(images, labels, strict=True):
        if image[0].any():  # the 24x24 gray image, resized to fill the whole 28x28 canvas
            expected = 30 + 20 * int(label)
            assert (image == (255 - expected if invert else expected)).all()
            continue
        # 40x30 -> 28x21 (aspect kept), centred: 3 empty rows above and 4 below, always black
        letterboxed += 1
        grey = round(sum(w * c for w, c in zip(weights, colours[int(label)], strict=True)))
        assert (image[3:24] == (255 - grey if invert else grey)).all()
        assert not image[:3].any() and not image[24:].any()
    assert letterboxed == 80


def test_usps_bz2_files_are_read_resized_and_capped(tmp_path: Path) -> None:
    root = tmp_path / "usps"
    root.mkdir()
    for filename, count, seed in (("usps.bz2", 100, 3), ("usps.t.bz2", 50, 4)):
        images, labels = digits(count, seed=seed, side=16)
        values = np.where(images > 127, 1.0, -1.0).reshape(count, -1)  # libsvm lines: label 1..10, pixels in -1..1
        with bz2.open(root / filename, "wt") as handle:
            for label, row in zip(labels, values, strict=True):
                handle.write(f"{label + 1} " + " ".join(f"{i + 1}:{v:g}" for i, v in enumerate(row)) + "\n")

    raw, raw_labels = sources.load(DataSource.model_validate({**embedded(), "dataset": "usps", "root": str(root)}),
                                   key="ingest.target")
    assert raw.shape == (150, 16, 16) and set(np.unique(raw)) == {0, 255} and raw_labels.max() == 9

    params = parse_params(tiny_params_dict(ingest={"target": {"dataset": "usps", "root": str(root), "size": 20},
                                                   "target_samples": 100}))
    _, target = ingest_files(params, tmp_path)
    images, labels = every_image(target, ("pool", "val", "test"))
    assert len(labels) == 100 and np.bincount(labels).tolist() == [10] * NUM_CLASSES, "stratified cap"
    border = np.ones((IMAGE_SIDE, IMAGE_SIDE), bool)
    border[4:24, 4:24] = False  # 16x16 -> 20x20, centred
    assert not images[:, border].any() and images[:, ~border].max() == 255


def colour_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform 32x32 RGB images (N, 32, 32, 3) of one colour per class (CLASS_COLOURS), and labels 0..9 in turn."""
    labels = np.arange(count, dtype=np.int64) % NUM_CLASSES
    images = np.broadcast_to(CLASS_COLOURS[labels][:, None, None, :], (count, 32, 32, 3)).copy()
    return images, labels


CLASS_COLOURS = np.array([(25 * c, 255 - 20 * c, 7 * c + 3) for c in range(NUM_CLASSES)], dtype=np.uint8)


def test_cifar10_pickled_batches_become_gray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = colour_images(120)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, chunk in zip(names, np.array_split(np.arange(120), 6), strict=True):
        batch = {"data": images[chunk].transpose(0, 3, 1, 2).reshape(len(chunk), -1), "labels": labels[chunk].tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    # torchvision checks CIFAR's files against the real ones' checksums: give it those of the tiny files instead
    monkeypatch.setattr(datasets.CIFAR10, "train_list", [[n, md5(folder / n)] for n in names[:5]])
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(datasets.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                                   "md5": md5(folder / "batches.meta")})

    source, _ = ingest_files(side_params("source", dataset="cifar10", root=str(tmp_path / "cifar")), tmp_path)
    out, out_labels = every_image(source, ("train", "val", "test"))
    assert len(out_labels) == 120 and np.bincount(out_labels).tolist() == [12] * NUM_CLASSES
    grey = CLASS_COLOURS.astype(float) @ np.array(LUMINANCE)  # 0.299 R + 0.587 G + 0.114 B
    # 32x32 -> 28x28 fills the canvas; each image is its class's luminance (not, e.g., the channel mean)
    assert all((image == image[0, 0]).all() for image in out)
    assert np.abs(out[:, 0, 0] - grey[out_labels]).max() <= 0.5 + 1e-3


def test_svhn_mat_files_label_zero_as_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "svhn"
    root.mkdir()
    split_list = {}
    for split, count in (("train", 100), ("test", 50)):
        images, labels = colour_images(count)
        filename = f"{split}_32x32.mat"
        # SVHN's layout: X is (32, 32, 3, N), y is (N, 1) with 10 for the digit 0
        scipy.io.savemat(root / filename, {"X": images.transpose(1, 2, 3, 0), "y": np.where(labels == 0, 10, labels)
                                           .reshape(-1, 1).astype(np.uint8)})
        split_list[split] = ["", filename, md5(root / filename)]
    monkeypatch.setattr(datasets.SVHN, "split_list", split_list)

    _, target = ingest_files(side_params("target", dataset="svhn", root=str(root), size=28), tmp_path)
    _, labels = every_image(target, ("pool", "val", "test"))
    assert len(labels) == 150 and np.bincount(labels).tolist() == [15] * NUM_CLASSES


def embedded() -> dict[str, Any]:
    """The project's target source settings (embedded), as a plain dict."""
    return tiny_params_dict()["ingest"]["target"]


def test_missing_files_without_download_name_folder_dataset_and_key(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default root is data/raw/<dataset>, relative to the project
    params = side_params("source", dataset="mnist")
    with pytest.raises(DataError) as caught:
        build_datasets(params.ingest, params.seed)
    message = str(caught.value)
    assert "ingest.source.dataset=mnist" in message and str(Path("data/raw/mnist")) in message
    assert "MNIST/raw/" in message and "set ingest.source.download: true" in message
    assert not (tmp_path / "data").exists(), "nothing is created or downloaded"

    params = side_params("target", dataset="image_folder", root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"ingest\.target\.dataset=image_folder: .*nowhere.*ingest\.target\.root"):
        build_datasets(params.ingest, params.seed)


def test_a_class_count_other_than_10_is_refused(tmp_path: Path) -> None:
    write_png_classes(tmp_path / "three", 3)
    params = side_params("target", dataset="image_folder", root=str(tmp_path / "three"))
    with pytest.raises(DataError, match=r"ingest\.target\.dataset=image_folder in .*three: 3 classes .* has 10"):
        build_datasets(params.ingest, params.seed)


def test_every_torchvision_choice_has_a_reader() -> None:
    choices = set(typing.get_args(DataSource.model_fields["dataset"].annotation))
    assert set(TORCHVISION_DATASETS) == set(sources.TORCHVISION) == choices - {"embedded", "image_folder"}
    for spec in sources.TORCHVISION.values():
        assert hasattr(datasets, spec.class_name)
