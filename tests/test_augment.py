"""augment: batched augmentation with per-image randomness, and the materialising stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from groundwork.data.datasets import load_dataset
from groundwork.params import Params
from groundwork.params.data import AugmentParams
from groundwork.project import tiny_params_dict
from groundwork.training.transforms import augment_batch
from tasks import augment

FAMILIES = ("rotation", "scale", "translate", "brightness", "contrast", "blur", "erasing")


def augment_params(probability: float, **changes: object) -> AugmentParams:
    """The project's augmentation params with every family's probability set to `probability`."""
    raw = tiny_params_dict()["augment"]
    for family in FAMILIES:
        raw[family]["probability"] = probability
    return AugmentParams.model_validate({**raw, **changes})


def digits(count: int = 16) -> torch.Tensor:
    images = torch.zeros(count, 1, 28, 28)
    images[:, :, 6:22, 12:16] = 1.0  # a vertical bar: rotation and translation visibly move it
    return images


def test_identity_when_probability_is_zero() -> None:
    images = digits()
    out = augment_batch(images, augment_params(0.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_each_image_gets_its_own_transform() -> None:
    out = augment_batch(digits(), augment_params(1.0), torch.Generator().manual_seed(0))
    assert out.shape == (16, 1, 28, 28)
    assert out.min() >= 0.0 and out.max() <= 1.0
    flat = out.flatten(1)
    distinct = {tuple(row.round(decimals=3).tolist()) for row in flat}
    assert len(distinct) == 16, "a batched v2 call would give every image the same parameters"


def test_erasing_blanks_a_rectangle_of_the_asked_area() -> None:
    images = torch.ones(64, 1, 28, 28)
    cfg = augment_params(0.0, erasing={"probability": 1.0, "area": [0.1, 0.2]})
    erased = (augment_batch(images, cfg, torch.Generator().manual_seed(0)) == 0).float().mean(dim=(1, 2, 3))
    assert erased.min() > 0.05 and erased.max() < 0.25  # area share, up to rounding to whole pixels


def test_same_seed_same_augmentation() -> None:
    cfg = augment_params(1.0)
    first = augment_batch(digits(), cfg, torch.Generator().manual_seed(3))
    second = augment_batch(digits(), cfg, torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, second)


def test_run_materialises_copies_and_a_preview(tmp_path: Path, tiny_params: Params,
                                               tiny_data: dict[str, Path]) -> None:
    out, preview = tmp_path / "aug.npz", tmp_path / "preview.png"
    metrics = augment.run(tiny_params, source=tiny_data["source"], out=out, preview=preview)
    source, _ = load_dataset(tiny_data["source"], splits=("train",))
    augmented, digest = load_dataset(out, splits=("train",))
    n = len(source["train"])
    assert len(augmented["train"]) == n * (tiny_params.augment.copies + 1) == metrics["images_out"]
    np.testing.assert_array_equal(augmented["train"].images[:n], source["train"].images)  # originals kept
    np.testing.assert_array_equal(augmented["train"].labels[n:], source["train"].labels)
    assert 0.05 < metrics["pixels_changed"] < 1.0
    assert metrics["digest"] == digest
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
