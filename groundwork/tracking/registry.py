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


def logged_model_id(version: Any) -> str | None:
    """The logged model a registered version was made from. MLflow's SQL registry leaves the version's model_id
    empty and keeps the id only in its source, `models:/<model_id>`."""
    if version.model_id:
        return version.model_id
    reference = version.source.removeprefix("models:/") if version.source.startswith("models:/") else ""
    return reference if reference.startswith("m-") and "/" not in reference else None


def champion_score(client: Any, name: str, version: str, metric: str, dataset_digest: str | None) -> float | None:
    """`metric` as measured on a registered version's logged model (MLflow's model-linked metrics), on the
    dataset of `dataset_digest` where it was measured there, else its latest; None when it has none."""
    model_id = logged_model_id(client.get_model_version(name, version))
    if not model_id:
        return None
    measured = [m for m in client.get_logged_model(model_id).metrics or () if m.key == metric]
    same_data = [m for m in measured if dataset_digest is not None and m.dataset_digest == dataset_digest]
    latest = max(same_data or measured, key=lambda m: m.timestamp, default=None)
    return None if latest is None else float(latest.value)


def gate(client: Any, name: str, version: str, scores: Mapping[str, float], *, metric: str, min_gain: float,
         dataset_digest: str | None = None) -> GateDecision:
    """Compare the candidate version's `scores` with the champion's own model-linked score, move the alias if
    the candidate wins, and tag the version with the decision."""
    alias = client.get_registered_model(name).aliases.get(CHAMPION)
    champion_version = None if alias is None else str(alias)
    score = None if champion_version is None else champion_score(client, name, champion_version, metric,
                                                                   dataset_digest)
    decision = decide(scores[metric], score, metric=metric, min_gain=min_gain, champion_version=champion_version)
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


def challenge(client: Any, name: str, version: str, decision: GateDecision) -> None:
    """Tag the challenger version with the decision, give it the `challenger` alias, and move `champion` to it
    when the decision says so."""
    for key, value in decision.as_tags().items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_registered_model_alias(name, CHALLENGER, version)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    log.info("challenger %s version %s: %s", name, version, decision.reason)
