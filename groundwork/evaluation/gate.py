"""The champion gate's rule. A new version takes the `champion` alias when there is no champion yet, or when,
scored on the same images that neither model learnt from, it is significantly more accurate than the champion
(paired test), or non-inferior within the margin and better on the objective by a timing ratio whose 95% interval
excludes a tie. Noise alone cannot move the alias: a tie stays with the champion. The adaptive loop's challenger
gate asks the same paired question on its holdout, and checks forgetting on the original test split."""

from __future__ import annotations

from groundwork.evaluation.statistics import PairedTest, Ratio
from groundwork.tracking.registry import CHAMPION, GateDecision


def paired_evidence(test: PairedTest, margin_points: float, *, label: str = "") -> dict[str, str]:
    """A paired test's numbers as the decision's evidence (tags), keys prefixed by `label` when given."""
    prefix = f"{label}." if label else ""
    return {f"{prefix}images": str(test.images), f"{prefix}losses": str(test.losses),
            f"{prefix}wins": str(test.wins), f"{prefix}p_value": f"{test.p_value:.4g}",
            f"{prefix}loss_upper_points": f"{test.loss_upper_points:.3f}",
            f"{prefix}margin_points": f"{margin_points:g}"}


def decide(test: PairedTest | None, gain: Ratio | None, *, metric: str, margin_points: float, objective: str,
           candidate: float, champion: float | None, champion_version: str | None,
           unscored: str = "") -> GateDecision:
    """The gate's rule. `test` compares the candidate (model) with the champion (reference) on shared images, `gain`
    is how many times better the candidate is on the objective (None: not measured), `candidate` / `champion` are
    the metric on those images. With a champion but no test, `unscored` says why it could not be scored, and the
    champion stays."""
    if champion_version is None:
        return GateDecision(True, f"no {CHAMPION} yet: the candidate becomes it", metric, candidate, None, None)
    if test is None:
        return GateDecision(False, f"kept {CHAMPION} (version {champion_version}): {unscored}", metric, candidate,
                            None, champion_version, {"test": "none"})
    evidence = {"test": "exact McNemar" if metric == "accuracy" else "paired bootstrap",
                **paired_evidence(test, margin_points)}
    scores = (f"{metric} {candidate:.4f} against the {CHAMPION}'s {champion:.4f} on {test.images} shared images "
              f"({test.wins} won, {test.losses} lost, p = {test.p_value:.3g})")
    if test.significant and test.wins > test.losses:
        return GateDecision(True, f"promoted: significantly more accurate: {scores}", metric, candidate, champion,
                            champion_version, evidence)
    non_inferior = test.non_inferior(margin_points)
    better = gain is not None and gain.low > 1
    if gain is not None:
        evidence["objective"] = objective
        evidence["objective_ratio"] = f"{gain.value:.3f} [{gain.low:.3f}, {gain.high:.3f}]"
    if non_inferior and better:
        assert gain is not None
        return GateDecision(True, f"promoted: no worse than the {CHAMPION} within {margin_points:g} points (loss "
                            f"at most {test.loss_upper_points:.2f}) and {gain.value:.2f}x its {objective} "
                            f"[{gain.low:.2f}, {gain.high:.2f}]: {scores}", metric, candidate, champion,
                            champion_version, evidence)
    why = (f"may lose up to {test.loss_upper_points:.2f} points (margin {margin_points:g})" if not non_inferior else
           f"not better on {objective}" + ("" if gain is None else
                                           f" ({gain.value:.2f}x [{gain.low:.2f}, {gain.high:.2f}])"))
    return GateDecision(False, f"kept {CHAMPION}: not significantly more accurate, and {why}: {scores}", metric,
                        candidate, champion, champion_version, evidence)


def decide_challenger(holdout: PairedTest | None, original: PairedTest, *, max_forgetting: float,
                      champion_version: str | None, challenger_holdout: float | None) -> GateDecision:
    """Promote a challenger only if it is significantly more accurate than the incumbent on the new
    distribution's labelled holdout (exact McNemar, paired), and on the original test split neither loses
    significantly nor by more than `max_forgetting` (point estimate). Each test has the incumbent as reference."""
    evidence = {"test": "exact McNemar", **paired_evidence(original, max_forgetting * 100, label="original")}
    forgetting = original.loss_points / 100
    forgetting_text = (f"original test split: {original.losses} lost, {original.wins} won of {original.images} "
                       f"(forgetting {forgetting:+.4f}, at most {max_forgetting}; p = {original.p_value:.3g})")
    if holdout is None or challenger_holdout is None:
        return GateDecision(False, "no labelled holdout images from the new distribution yet: nothing to judge the "
                            "challenger on", "holdout_accuracy", float("nan"), None, champion_version, evidence)
    evidence.update(paired_evidence(holdout, 0.0, label="holdout"))
    holdout_text = (f"holdout: {holdout.wins} won, {holdout.losses} lost of {holdout.images} "
                    f"({-holdout.loss_points:+.2f} points, p = {holdout.p_value:.3g})")
    better = holdout.significant and holdout.wins > holdout.losses
    forgets = forgetting > max_forgetting or (original.significant and original.losses > original.wins)
    promote = better and not forgets
    verdict = ("promoted: " if promote else
               "kept champion: " + ("forgets too much; " if forgets else "not significantly better; "))
    incumbent_holdout = challenger_holdout + holdout.loss_points / 100
    return GateDecision(promote, verdict + holdout_text + "; " + forgetting_text, "holdout_accuracy",
                        challenger_holdout, incumbent_holdout, champion_version, evidence)
