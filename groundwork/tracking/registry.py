"""The Model Registry's champion gate: a new model version takes the `champion` alias only if it beats the
current champion on the chosen metric by at least the minimum gain (or if there is no champion yet)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
CHAMPION = "champion"


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on one candidate version, with both scores and the reason in words."""

    promote: bool
    reason: str
    metric: str
    candidate: float
    champion: float | None
    champion_version: str | None

    def as_tags(self) -> dict[str, str]:
        """The decision as MLflow tags, for the run and the model version."""
        return {"gate.decision": "promoted" if self.promote else "kept champion", "gate.reason": self.reason,
                "gate.metric": self.metric, "gate.candidate": f"{self.candidate:.6f}",
                "gate.champion": "none" if self.champion is None else f"{self.champion:.6f}"}


def decide(candidate: float, champion: float | None, *, metric: str, min_gain: float,
           champion_version: str | None = None) -> GateDecision:
    """Promote when there is no champion, or when the candidate beats it by at least `min_gain`."""
    if champion is None:
        reason = (f"no {CHAMPION} yet: the candidate becomes it" if champion_version is None else
                  f"the {CHAMPION} (version {champion_version}) has no {metric} score: the candidate replaces it")
        return GateDecision(True, reason, metric, candidate, None, champion_version)
    gain = candidate - champion
    if gain >= min_gain:
        reason = f"{metric} {candidate:.4f} beats the {CHAMPION}'s {champion:.4f} by {gain:+.4f} (>= {min_gain})"
    else:
        reason = f"{metric} {candidate:.4f} against the {CHAMPION}'s {champion:.4f}: {gain:+.4f} < {min_gain}"
    return GateDecision(gain >= min_gain, reason, metric, candidate, champion, champion_version)


def gate(client: Any, name: str, version: str, scores: Mapping[str, float], *, metric: str,
         min_gain: float) -> GateDecision:
    """Tag the candidate version with its scores, compare it with the champion, move the alias if it wins."""
    for key, value in scores.items():
        client.set_model_version_tag(name, version, key, str(value))
    alias = client.get_registered_model(name).aliases.get(CHAMPION)
    champion_version = None if alias is None else str(alias)
    champion_score = None
    if champion_version is not None:
        tags = client.get_model_version(name, champion_version).tags
        champion_score = float(tags[metric]) if metric in tags else None
    decision = decide(scores[metric], champion_score, metric=metric, min_gain=min_gain,
                      champion_version=champion_version)
    for key, value in decision.as_tags().items():
        client.set_model_version_tag(name, version, key, value)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    log.info("gate for %s version %s: %s (%s)", name, version,
             "promoted to champion" if decision.promote else "champion kept", decision.reason)
    return decision


CHALLENGER = "challenger"


def decide_challenger(challenger: Mapping[str, float | None], incumbent: Mapping[str, float | None], *,
                      min_gain: float, max_forgetting: float, champion_version: str | None) -> GateDecision:
    """Promote a challenger only if it beats the incumbent on the new distribution's holdout by at least
    `min_gain` and loses at most `max_forgetting` accuracy on the original test split against it. Both maps hold
    `holdout_accuracy` (None: no holdout labels yet) and `original_accuracy`."""
    holdout, original = challenger["holdout_accuracy"], challenger["original_accuracy"]
    incumbent_holdout, incumbent_original = incumbent["holdout_accuracy"], incumbent["original_accuracy"]
    assert original is not None and incumbent_original is not None  # the original test split is always there
    forgetting = incumbent_original - original
    if holdout is None or incumbent_holdout is None:
        return GateDecision(False, "no labelled holdout images from the new distribution yet: nothing to judge the "
                            "challenger on", "holdout_accuracy", float("nan"), None, champion_version)
    gain = holdout - incumbent_holdout
    holdout_text = f"holdout accuracy {holdout:.4f} against {incumbent_holdout:.4f} ({gain:+.4f}, needs {min_gain:+})"
    forgetting_text = (f"original test accuracy {original:.4f} against {incumbent_original:.4f} (forgetting "
                       f"{forgetting:+.4f}, at most {max_forgetting})")
    promote = gain >= min_gain and forgetting <= max_forgetting
    verdict = ("promoted: " if promote else
               "kept champion: " + ("forgets too much; " if forgetting > max_forgetting else "no better; "))
    return GateDecision(promote, verdict + holdout_text + "; " + forgetting_text, "holdout_accuracy", holdout,
                        incumbent_holdout, champion_version)


def challenge(client: Any, name: str, version: str, scores: Mapping[str, float], decision: GateDecision) -> None:
    """Tag the challenger version with its scores and the decision, give it the `challenger` alias, and move
    `champion` to it when the decision says so."""
    for key, value in {**scores, **decision.as_tags()}.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_registered_model_alias(name, CHALLENGER, version)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    log.info("challenger %s version %s: %s", name, version, decision.reason)
