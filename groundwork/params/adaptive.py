"""The adaptive loop's sections: the simulated stream, drift monitoring, which images are asked about, and
continual fine-tuning with its gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from groundwork.params.base import Fraction, Section
from groundwork.params.training import TrainParams

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
    """Continual fine-tuning of the champion's fp32 model on the labels it has not learnt plus a replay of earlier
    data, and the gate that may promote the result."""

    min_labels: int = Field(ge=1, le=100000, description="training labels the champion has not learnt, needed "
                                                              "before the adapt path runs")
    replay_target: int = Field(ge=0, le=100000, description="labelled target training images replayed")
    replay_source: int = Field(ge=0, le=100000, description="source training images replayed")
    replay_learnt: int = Field(ge=0, le=100000, description="the loop's earlier labels the champion already learnt, "
                                                            "replayed")
    finetune: TrainParams
    max_forgetting: float = Field(ge=0.0, le=1.0, description="largest accuracy loss allowed on the original target "
                                                             "test split (point estimate; a significant loss blocks "
                                                             "as well)")


class CaptureParams(Section):
    """What `groundwork serve` keeps of the requests it answers, for the loop to watch (groundwork.serving.capture)."""

    enabled: bool = Field(description="write the served model's formatted inputs and answers into data/incoming")
    batch_size: int = Field(ge=1, le=100000, description="images per batch file written")


class AdaptiveParams(Section):
    """The adaptive-learning loop: a stream of batches is monitored for drift, informative images are queued for
    labelling, and the champion is fine-tuned on the labels and gated against forgetting."""

    stream: StreamParams
    monitor: MonitorParams
    ask: AskParams
    adapt: AdaptParams
    capture: CaptureParams
