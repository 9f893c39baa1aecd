"""The model's architecture and the training sections: pretrain, transfer, the label-budget sweep, and the one
training run they all configure."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from groundwork.data.canvas import IMAGE_SIDE  # every image, source or target, is brought to 28x28 gray by ingest
from groundwork.models.geometry import LENET_KERNEL, MIN_EMBEDDING, MIN_WIDTH, LayerGeometry
from groundwork.params.base import NonNegativeFloat, Section

Width = Annotated[int, Field(ge=MIN_WIDTH, le=256)]
Hidden = Annotated[int, Field(ge=1, le=1024)]  # bounded: a saved file may come from elsewhere
# MNIST's pixel statistics, the normalisation a model applies when its file predates the params that set it
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class ModelParams(Section, LayerGeometry):
    """Architecture shared by pretrain, transfer and compress: the CNN, an MLP, or LeNet-5, and its normalisation."""

    arch: Literal["cnn", "mlp", "lenet5"] = Field(
        description="cnn: blocks of two 3x3 convs with BatchNorm, then a dense embedding; mlp: dense layers of the "
                    "hidden sizes; lenet5: 5x5 convs without BatchNorm (Deep Compression's LeNet-5), then a dense "
                    "embedding")
    channels: tuple[Width, ...] = Field(min_length=1, max_length=3,
                                        description="cnn: width of each conv block; lenet5: of each 5x5 conv")
    inner_channels: tuple[Width, ...] | None = Field(
        description="cnn: width of each block's first conv; null: as wide as the block (pruning narrows them apart)"
    )
    embedding_dim: int = Field(ge=MIN_EMBEDDING, le=1024, description="cnn, lenet5: units of the dense embedding")
    hidden: tuple[Hidden, ...] = Field(min_length=1, max_length=4,
                                       description="mlp: units of each hidden layer; the last is the embedding")
    pixel_mean: float = Field(ge=0.0, le=1.0, description="subtracted from 0..1 pixels inside the model")
    pixel_std: float = Field(ge=0.01, le=1.0, description="what pixels are divided by after the mean")
    dropout: float = Field(ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _shapes_fit(self) -> ModelParams:
        if self.inner_channels is not None and (self.arch != "cnn" or len(self.inner_channels) != len(self.channels)):
            raise ValueError(f"inner_channels {list(self.inner_channels)} needs arch cnn and one width per block of "
                             f"channels {list(self.channels)}")
        if self.arch == "lenet5" and self.layers()[len(self.channels) - 1].side < 2:
            raise ValueError(f"channels {list(self.channels)}: {len(self.channels)} {LENET_KERNEL}x{LENET_KERNEL} "
                             f"convs with 2x2 pools do not fit {IMAGE_SIDE}x{IMAGE_SIDE} images (at most 2 do)")
        return self

    @classmethod
    def from_saved(cls, arch: dict[str, Any]) -> ModelParams:
        """The architecture a saved model describes; files written before a key existed have its old meaning:
        the CNN, as wide as its blocks, normalised with MNIST's statistics."""
        return cls.model_validate({"arch": "cnn", "inner_channels": None, "hidden": (256, 128),
                                   "pixel_mean": MNIST_MEAN, "pixel_std": MNIST_STD, **arch})

    def with_widths(self, widths: tuple[int, ...] | list[int]) -> ModelParams:
        """This architecture with each prunable layer at the width given (in `layer_widths` order), validated."""
        widths = tuple(widths)
        if self.arch == "mlp":
            changes: dict[str, Any] = {"hidden": widths}
        elif self.arch == "lenet5":
            changes = {"channels": widths[:-1], "embedding_dim": widths[-1]}
        else:
            inner, outer = widths[:-1][0::2], widths[:-1][1::2]
            changes = {"channels": outer, "inner_channels": None if inner == outer else inner,
                       "embedding_dim": widths[-1]}
        return ModelParams.model_validate({**self.model_dump(), **changes})


class TrainParams(Section):
    """One training run of the shared loop: budget, optimizer, LR schedule, regularisation, stopping."""

    epochs: int = Field(ge=1, le=1000)
    batch_size: int = Field(ge=2, le=8192)
    optimizer: Literal["sgd", "momentum", "adam", "adamw"]
    lr: float = Field(gt=0.0, le=10.0)
    momentum: float = Field(ge=0.0, lt=1.0, description="used by the momentum optimizer")
    nesterov: bool
    weight_decay: NonNegativeFloat
    schedule: Literal["none", "cosine", "step", "onecycle", "plateau"]
    warmup_epochs: int = Field(ge=0, le=100, description="linear LR warm-up before the schedule starts")
    step_size: int = Field(ge=1, description="epochs between decays of the step schedule")
    gamma: float = Field(gt=0.0, le=1.0, description="LR decay factor of the step and plateau schedules")
    plateau_patience: int = Field(ge=0, le=100, description="epochs without val-loss gain before an LR cut")
    grad_clip: NonNegativeFloat = Field(description="max gradient norm; 0 disables clipping")
    early_stopping: int = Field(ge=0, le=1000, description="stop after this many epochs without val-loss gain; 0 never")
    restore_best: bool = Field(description="end with the weights of the epoch with the lowest val loss")
    augmentation: Literal["none", "online"] = Field(description="online: augment every batch as it is drawn")
    loss: Literal["cross_entropy", "mse"] = Field(
        description="cross_entropy on the labels, or mse: mean squared error between the softmax output and the "
                    "one-hot label (the survey's other loss); validation reports cross-entropy either way")

    @model_validator(mode="after")
    def _consistent(self) -> TrainParams:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        if self.schedule == "onecycle" and self.warmup_epochs:
            raise ValueError("warmup_epochs must be 0 with the onecycle schedule, which warms up by itself")
        return self


class StageTrainParams(TrainParams):
    """A stage's own training, which may run in several processes (DDP under torchrun, one per GPU)."""

    nproc: int = Field(ge=1, le=64, description="training processes; batch_size is the global batch, split evenly")

    @model_validator(mode="after")
    def _batch_splits_evenly(self) -> StageTrainParams:
        if self.batch_size % self.nproc or self.batch_size // self.nproc < 2:
            raise ValueError(f"batch_size ({self.batch_size}) must split into nproc ({self.nproc}) equal per-process "
                             "batches of at least 2 images")
        return self


class PretrainParams(StageTrainParams):
    """Pretraining on the source corpus: supervised, or contrastive (label-free, SimCLR's NT-Xent)."""

    augmentation: Literal["none", "online", "offline"] = Field(
        description="offline: train on the augment stage's copies; online: augment every batch"
    )
    objective: Literal["supervised", "contrastive"]
    temperature: float = Field(gt=0.0, le=10.0, description="NT-Xent temperature (contrastive)")
    projection_dim: int = Field(ge=8, le=1024, description="projection head output (contrastive)")
    probe_epochs: int = Field(ge=1, le=1000, description="linear-probe training on frozen features (contrastive)")


class SemiSupervised(Section):
    """Learning from the target's unlabelled pool during transfer (FixMatch: confident pseudo-labels of plain
    views taught to strongly augmented views)."""

    method: Literal["none", "fixmatch"] = Field(description="none: the labelled images alone")
    confidence: float = Field(gt=0.0, lt=1.0, description="softmax probability a pseudo-label needs to count")
    ratio: int = Field(ge=1, le=16, description="unlabelled images drawn per labelled one at every step (mu)")
    weight: float = Field(ge=0.0, le=10.0, description="weight of the unlabelled loss (lambda_u)")


class TransferParams(StageTrainParams):
    """Transfer to the target label budget, beside a from-scratch baseline with the same optimizer steps."""

    mode: Literal["linear_probe", "finetune", "discriminative"] = Field(
        description="linear_probe: frozen backbone; finetune: one LR; discriminative: lower backbone LR"
    )
    head: Literal["new", "keep"] = Field(
        description="new: a freshly initialised head; keep: the source's head (a warm start: same ten classes)"
    )
    semi_supervised: SemiSupervised
    backbone_lr_scale: float = Field(gt=0.0, le=1.0, description="backbone LR relative to lr (discriminative)")
    freeze_epochs: int = Field(ge=0, le=1000, description="head-only epochs first (discriminative)")

    @model_validator(mode="after")
    def _freeze_within_budget(self) -> TransferParams:
        if self.freeze_epochs >= self.epochs:
            raise ValueError(f"freeze_epochs ({self.freeze_epochs}) must be below epochs ({self.epochs})")
        return self


class BudgetParams(Section):
    """The label-budget sweep: transfer against scratch at several labels-per-class budgets."""

    labels_per_class: list[Annotated[int, Field(ge=1)] | None] = Field(
        min_length=1, description="budgets to sweep; null means every labelled image of the training pool"
    )
    draws: int = Field(ge=1, le=20, description="labelled sets drawn per budget (each with its own seed)")
    steps: int = Field(ge=1, le=100000, description="optimizer steps per model, the same at every budget")
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        description="processes training draws at once, torch's threads shared among them; auto: one per thread on a "
                    "CPU (small models keep one thread busy, not two), one on an accelerator")
