"""Making and choosing the deployable model: the compressed variants, the per-layer compression search, and
evaluate's timing, selection and gate."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from groundwork.compression.names import ServedVariant
from groundwork.params.base import Fraction, Section
from groundwork.params.training import TrainParams


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
    latency or multiply-adds, each candidate scored as `reward` says, beside the baselines."""

    agent: Literal["ddpg", "reinforce"] = Field(
        description="ddpg: actor-critic with a replay buffer (value-based, as AMC); reinforce: Gaussian policy "
                    "gradient (policy-based)"
    )
    budget_of: Literal["latency", "size", "macs"] = Field(
        description="latency: the latency table's estimate at evaluate's throughput batch, as a share of "
                    "structured_int8's measured latency (latency_kept); size: the bytes of weights the int8 file "
                    "stores, as a share of structured_int8's (size_kept); macs: the share of the prunable layers' "
                    "multiply-adds (macs_kept)")
    latency_kept: float = Field(gt=0.0, le=4.0, description="budget_of latency: share of structured_int8's measured "
                                                            "latency the searched network may take (below the "
                                                            "fastest network of the grid: that one is used)")
    size_kept: float = Field(gt=0.0, le=4.0, description="budget_of size: share of structured_int8's bytes of "
                                                         "weights the searched network may take (below the "
                                                         "smallest network of the grid: that one is used)")
    macs_kept: Fraction = Field(description="budget_of macs: share of the prunable layers' multiply-adds the pruned "
                                            "model keeps")
    min_keep: Fraction = Field(description="smallest share of its channels any layer keeps")
    width_multiple: int = Field(ge=1, le=4096, description="every searched width is a multiple of this (or the "
                                                           "layer's full width): vectorised kernels run whole "
                                                           "blocks of 8 or 16 channels")
    episodes: int = Field(ge=2, le=100000, description="candidates the agent scores (random search gets as many)")
    warmup_episodes: int = Field(ge=1, le=100000, description="episodes of random actions before the agent learns")
    calibration_images: int = Field(ge=16, le=100000,
                                    description="unlabelled target images that re-estimate BatchNorm statistics")
    reward: Literal["adaptive_bn", "distilled"] = Field(
        description="how a candidate is scored: adaptive_bn: validation accuracy right after BatchNorm "
                    "recalibration, fp32; distilled: after reward_epochs of compress's distillation fine-tune, "
                    "in int8 as searched_int8 ships (bench/reward_rank.py measures which ranks better)")
    reward_epochs: int = Field(ge=1, le=100, description="reward distilled: epochs of the short fine-tune")
    precision: Literal["int8", "mixed"] = Field(
        description="int8: every searched layer ships in int8 in searched_int8 (the first and the head as "
                    "compress.quantization.keep_ends_fp32 says); mixed: the agent also picks each other layer's "
                    "precision, int8 or fp32 (HAQ), priced by the latency table and scored by the distilled reward")
    latency_runs: int = Field(ge=1, le=10000, description="timed calls per cell of the latency table (median)")
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        description="reward distilled: processes scoring the random candidates (random search's, the agent's "
                    "warm-up) ahead, torch's threads shared among them; auto: one per thread on a CPU, one on an "
                    "accelerator")

    @model_validator(mode="after")
    def _warmup_within_episodes(self) -> SearchParams:
        if self.warmup_episodes >= self.episodes:
            raise ValueError(f"warmup_episodes ({self.warmup_episodes}) must be below episodes ({self.episodes})")
        return self

    @model_validator(mode="after")
    def _mixed_precision_scored_in_it(self) -> SearchParams:
        if self.precision == "mixed" and self.reward != "distilled":
            raise ValueError("precision 'mixed' needs reward 'distilled': the adaptive_bn reward scores in fp32, "
                             "so it cannot tell an int8 layer from an fp32 one")
        return self


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
