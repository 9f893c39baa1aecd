"""The power of the paired gate: how often a challenger truly `gain` points more accurate than the champion is
promoted (exact McNemar, two-sided, significant and ahead) on a holdout of a given size. Exact, not simulated:
the number of discordant images is binomial, and so are the challenger's wins among them."""

from __future__ import annotations

import numpy as np
from scipy import stats

from groundwork.evaluation.statistics import CONFIDENCE

POWER_GAIN_POINTS = 3  # the improvement the adaptive gate must catch with at least 80% power
# Share of holdout images a better challenger still gets wrong where the champion was right (its "losses" beside
# its wins): an assumption, not a measurement. More losses need a larger holdout: `python -m
# groundwork.adaptive.power` prints the holdout needed at 1%, 2% and 3%.
LOSS_SHARE = 0.02


def critical_wins(discordant: int, alpha: float = 1 - CONFIDENCE) -> int:
    """The fewest wins among `discordant` images that the exact McNemar test calls significant and ahead."""
    wins = np.arange(discordant // 2 + 1, discordant + 1)
    p_values = np.minimum(1.0, 2 * stats.binom.sf(wins - 1, discordant, 0.5))
    significant = wins[p_values < alpha]
    return int(significant[0]) if len(significant) else discordant + 1


def promotion_power(images: int, *, gain_points: float, loss_share: float = LOSS_SHARE) -> float:
    """Probability that a challenger `gain_points` more accurate than the champion (losing `loss_share` of the
    images the champion gets right) is promoted on `images` holdout images."""
    if images == 0:
        return 0.0
    gain = gain_points / 100
    discordant_share = 2 * loss_share + gain
    win_share = (loss_share + gain) / discordant_share
    counts = np.arange(images + 1)
    weights = stats.binom.pmf(counts, images, discordant_share)
    promote = np.array([stats.binom.sf(critical_wins(int(k)) - 1, int(k), win_share) if w > 1e-12 else 0.0
                        for k, w in zip(counts, weights, strict=True)])
    return float(np.sum(weights * promote))


def holdout_needed(*, gain_points: float = POWER_GAIN_POINTS, power: float = 0.8, loss_share: float = LOSS_SHARE,
                   step: int = 10) -> int:
    """The smallest holdout (a multiple of `step`) at which such a challenger is promoted with `power`."""
    images = step
    while promotion_power(images, gain_points=gain_points, loss_share=loss_share) < power:
        images += step
    return images


def main() -> None:
    """Print the power at a range of holdout sizes and the holdout each assumed loss share needs."""
    shares = (0.01, LOSS_SHARE, 0.03)
    print(f"power to promote a challenger {POWER_GAIN_POINTS} points better (exact McNemar, alpha 0.05), by the "
          "share of images it loses against the champion")
    print("holdout | " + " | ".join(f"loses {share:.0%}" for share in shares))
    for images in (100, 200, 300, 400, 500, 650, 800, 1000):
        powers = (promotion_power(images, gain_points=POWER_GAIN_POINTS, loss_share=share) for share in shares)
        print(f"{images:7d} | " + " | ".join(f"{power:8.0%}" for power in powers))
    print("holdout for 80% power: " + ", ".join(f"{holdout_needed(loss_share=s)} at {s:.0%}" for s in shares))


if __name__ == "__main__":
    main()
