"""The uncertainty of a score and of a difference between two models scored on the same images.

- one model's accuracy: Wilson's interval; its macro F1: a percentile bootstrap over the test images;
- two models on the same images: the exact McNemar test (a binomial test on the discordant pairs) and an exact
  interval for the accuracy lost, conditional on how many images the two disagree on (Clopper-Pearson on the share
  of discordant images the reference gets right): `loss = discordant / n * (2 p - 1)`;
- the same two methods over several clusters of images (data splits, seeds): the mean gain with a two-stage
  bootstrap interval, clusters then images;
- two timings measured in the same interleaved rounds: the geometric mean of the per-round ratios with a
  t-interval on their logarithms.

scipy does the arithmetic; what is here is which test answers which question.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95  # every interval and test of the project: two-sided 95%, or one-sided 95% for non-inferiority
BOOTSTRAP_ROUNDS = 2000


def accuracy_interval(correct: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's interval for the share of True in `correct` (one entry per test image)."""
    n = len(correct)
    interval = stats.binomtest(int(np.sum(correct)), n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def macro_f1(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Macro-averaged F1 of each row of `labels` / `predicted` (shape (B, n) or (n,)), vectorised over rows; a
    class absent from a row's labels and predictions counts 0, as scikit-learn's zero_division=0 does."""
    labels, predicted = np.atleast_2d(labels), np.atleast_2d(predicted)
    rows = np.arange(len(labels))[:, None] * classes
    size = len(labels) * classes
    true_positive = np.bincount((rows + labels)[labels == predicted], minlength=size).reshape(-1, classes)
    support = np.bincount((rows + labels).ravel(), minlength=size).reshape(-1, classes)
    chosen = np.bincount((rows + predicted).ravel(), minlength=size).reshape(-1, classes)
    denominator = support + chosen
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros(denominator.shape), where=denominator > 0)
    return f1.mean(axis=1)


def f1_interval(labels: np.ndarray, predicted: np.ndarray, *, classes: int, seed: int,
                confidence: float = CONFIDENCE, rounds: int = BOOTSTRAP_ROUNDS) -> tuple[float, float]:
    """Percentile bootstrap interval of macro F1, resampling test images with replacement."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(labels), size=(rounds, len(labels)))
    values = macro_f1(labels[drawn], predicted[drawn], classes)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedTest:
    """A model against a reference on the same images: the images only the reference gets right (`losses`) or only
    the model gets right (`wins`), the exact McNemar p-value, and the accuracy the model loses (points, positive =
    worse) with its one-sided 95% upper bound and two-sided 95% interval."""

    images: int
    losses: int
    wins: int
    p_value: float
    loss_points: float
    loss_upper_points: float
    loss_low_points: float
    loss_high_points: float

    @property
    def discordant(self) -> int:
        """Images on which exactly one of the two is right."""
        return self.losses + self.wins

    @property
    def significant(self) -> bool:
        """The two differ in accuracy beyond noise (McNemar, two-sided, at 1 - CONFIDENCE)."""
        return self.p_value < 1 - CONFIDENCE

    def non_inferior(self, margin_points: float) -> bool:
        """The one-sided 95% upper bound of the loss stays within `margin_points`."""
        return self.loss_upper_points <= margin_points

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """Flat numbers for a table, a JSON report or MLflow."""
        return {f"{prefix}_losses": self.losses, f"{prefix}_wins": self.wins, f"{prefix}_p_value": self.p_value,
                f"{prefix}_loss_points": self.loss_points, f"{prefix}_loss_upper_points": self.loss_upper_points,
                f"{prefix}_loss_low_points": self.loss_low_points,
                f"{prefix}_loss_high_points": self.loss_high_points}


def _loss_bounds(losses: int, discordant: int, images: int, confidence: float) -> tuple[float, float]:
    """Clopper-Pearson interval of the share of discordant images that are losses, as points of accuracy lost."""
    if discordant == 0:
        return 0.0, 0.0
    share = stats.binomtest(losses, discordant).proportion_ci(confidence_level=confidence, method="exact")
    scale = discordant / images * 100
    return scale * (2 * share.low - 1), scale * (2 * share.high - 1)


def paired_test(reference_correct: np.ndarray, model_correct: np.ndarray) -> PairedTest:
    """The model against the reference on the same images (boolean arrays, one entry per image, in one order)."""
    if reference_correct.shape != model_correct.shape:
        raise ValueError(f"paired scores need the same images: {reference_correct.shape} != {model_correct.shape}")
    images = len(reference_correct)
    losses = int(np.sum(reference_correct & ~model_correct))
    wins = int(np.sum(~reference_correct & model_correct))
    discordant = losses + wins
    p_value = 1.0 if discordant == 0 else float(stats.binomtest(losses, discordant, 0.5).pvalue)
    _, upper = _loss_bounds(losses, discordant, images, 1 - 2 * (1 - CONFIDENCE))  # one-sided 95%: a 90% interval
    low, high = _loss_bounds(losses, discordant, images, CONFIDENCE)
    return PairedTest(images, losses, wins, p_value, (losses - wins) / images * 100, upper, low, high)


def tie_upper_bound_points(images: int, discordant: int) -> float:
    """The one-sided 95% upper bound of the loss when a model ties its reference (as many wins as losses) on
    `discordant` of `images` images: the smallest margin such a model passes."""
    half = discordant // 2
    return _loss_bounds(half, 2 * half, images, 1 - 2 * (1 - CONFIDENCE))[1]


def clustered_gain(reference: Sequence[np.ndarray], model: Sequence[np.ndarray], *, seed: int,
                   confidence: float = CONFIDENCE, rounds: int = BOOTSTRAP_ROUNDS) -> tuple[float, float, float]:
    """The accuracy `model` gains over `reference`, in points, averaged over clusters (one pair of boolean arrays
    per cluster, e.g. a data split and a seed, the two scored on the same images), with its two-stage percentile
    bootstrap interval: clusters drawn with replacement, then the images of each drawn cluster. Clusters that share
    images (splits of one pool) are not independent samples of images; resampling whole clusters keeps a gain that
    holds in one cluster alone from looking like a general one."""
    gains = [np.asarray(m, dtype=np.int8) - np.asarray(r, dtype=np.int8) for r, m in zip(reference, model,
                                                                                        strict=True)]
    rng = np.random.default_rng(seed)
    draws = np.empty(rounds)
    for round_ in range(rounds):
        picked = rng.integers(len(gains), size=len(gains))
        draws[round_] = np.mean([gains[c][rng.integers(len(gains[c]), size=len(gains[c]))].mean() for c in picked])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(np.mean([gain.mean() for gain in gains]) * 100), float(low * 100), float(high * 100)


@dataclass(frozen=True)
class Ratio:
    """How many times `numerator`'s timing is `denominator`'s, from per-round ratios: the geometric mean, its 95%
    interval, and the rounds' spread (relative standard deviation of the ratios)."""

    value: float
    low: float
    high: float
    spread: float
    rounds: int

    @property
    def excludes_tie(self) -> bool:
        """The interval lies wholly above or below 1."""
        return self.low > 1 or self.high < 1


def ratio(numerator: np.ndarray, denominator: np.ndarray, confidence: float = CONFIDENCE) -> Ratio:
    """Ratio of two positive per-round measurements taken in the same rounds (e.g. throughputs)."""
    logs = np.log(np.asarray(numerator, float)) - np.log(np.asarray(denominator, float))
    rounds = len(logs)
    mean = float(logs.mean())
    if rounds < 2 or float(logs.std()) == 0.0:
        return Ratio(math.exp(mean), math.exp(mean), math.exp(mean), 0.0, rounds)
    half = float(stats.t.ppf((1 + confidence) / 2, rounds - 1)) * float(logs.std(ddof=1)) / math.sqrt(rounds)
    values = np.exp(logs)
    return Ratio(math.exp(mean), math.exp(mean - half), math.exp(mean + half),
                 float(values.std(ddof=1) / values.mean()), rounds)


def paired_f1_test(labels: np.ndarray, reference: np.ndarray, model: np.ndarray, *, classes: int, seed: int,
                   rounds: int = BOOTSTRAP_ROUNDS) -> PairedTest:
    """The model's macro F1 against the reference's on the same images (predicted classes of each), by a paired
    bootstrap over images: the F1 lost (points), its one-sided 95% upper bound and two-sided 95% interval, and a
    two-sided bootstrap p-value of no difference. `losses` / `wins` count images as for accuracy."""
    reference_correct, model_correct = reference == labels, model == labels
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(labels), size=(rounds, len(labels)))
    lost = (macro_f1(labels[drawn], reference[drawn], classes) - macro_f1(labels[drawn], model[drawn], classes)) * 100
    observed = float(macro_f1(labels, reference, classes)[0] - macro_f1(labels, model, classes)[0]) * 100
    p_value = 1.0 if not lost.any() else float(min(1.0, 2 * min(np.mean(lost <= 0), np.mean(lost >= 0))))
    low, high = np.percentile(lost, [2.5, 97.5])
    return PairedTest(len(labels), int(np.sum(reference_correct & ~model_correct)),
                      int(np.sum(~reference_correct & model_correct)), p_value, observed,
                      float(np.percentile(lost, 95)), float(low), float(high))
