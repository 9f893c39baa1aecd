"""The Model Registry's side of the champion gate: the decision as tags, moving the `champion` and `challenger`
aliases, and what a version records of itself for a later gate and for the adaptive loop (its ONNX file, the
images it learnt from, its fp32 weights and variant form). The rule that decides lives in
groundwork.evaluation.gate."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
CHAMPION = "champion"
LEARNT_FROM_TAG = "learnt_from"  # on a model version: runs:/<run>/<file> listing the ids of the images it learnt from
LEARNT_FROM_FILE = "learnt_from.txt"  # one image id a line
# on a model version: runs:/<run>/<file>, the fp32 checkpoint behind its served file, which the adaptive loop fine-tunes
WEIGHTS_TAG = "fp32_weights"
# on a model version: the variant whose recipe made its served file from those weights (groundwork.compression.names)
FORM_TAG = "form"
# on a model version: runs:/<run>/<file> listing the ids of the adaptive loop's labelled images it was trained on
LABELS_LEARNT_TAG = "labels_learnt"
LABELS_LEARNT_FILE = "labels_learnt.txt"  # one image id a line
# on a version the gate promoted: the version that held `champion` before it, where `groundwork rollback` goes back to
PREVIOUS_CHAMPION_TAG = "champion.previous"


@dataclass(frozen=True)
class Champion:
    """The registered champion: its version, its ONNX file (downloaded), the ids of the images it learnt or was
    validated on (None: its version does not record them), its fp32 checkpoint (downloaded) with the variant form
    its served file has, and the ids of the loop's labelled images it was trained on (None: its version does not
    record them)."""

    version: str
    path: Path
    learnt_from: frozenset[str] | None
    weights: Path | None = None
    form: str | None = None
    labels_learnt: frozenset[str] | None = None


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on one candidate version, with both scores, the reason in words and the test behind it."""

    promote: bool
    reason: str
    metric: str
    candidate: float
    champion: float | None
    champion_version: str | None
    evidence: Mapping[str, str] = field(default_factory=dict)  # the test, its p-value, the margin, the images

    def as_tags(self) -> dict[str, str]:
        """The decision as MLflow tags, for the run and the model version, with the time it was taken (UTC)."""
        return {"gate.decision": "promoted" if self.promote else "kept champion", "gate.reason": self.reason,
                "gate.time": _now(),
                "gate.metric": self.metric, "gate.candidate": f"{self.candidate:.6f}",
                "gate.champion": "none" if self.champion is None else f"{self.champion:.6f}",
                **{f"gate.{key}": value for key, value in self.evidence.items()}}


def apply_gate(client: Any, name: str, version: str, decision: GateDecision) -> None:
    """Tag a registered version with the gate's decision and move the alias when it promotes."""
    for key, value in decision.as_tags().items():
        client.set_model_version_tag(name, version, key, value)
    if decision.promote:
        _make_champion(client, name, version)
    log.info("gate for %s version %s: %s (%s)", name, version,
             "promoted to champion" if decision.promote else "champion kept", decision.reason)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _make_champion(client: Any, name: str, version: str) -> None:
    """Move `champion` to `version`, recording on it the version that held the alias before (if any), and on the
    card of that one that it no longer holds it."""
    previous = champion_version(client, name)
    if previous is not None and previous != version:
        client.set_model_version_tag(name, version, PREVIOUS_CHAMPION_TAG, previous)
        _note_on_card(client, name, previous, f"was `{CHAMPION}` until version {version} took the alias")
    client.set_registered_model_alias(name, CHAMPION, version)


def _note_on_card(client: Any, name: str, version: str, note: str) -> None:
    """Append a dated line to a version's card (its description): the card's gate line says what was decided when
    it was registered, this what became of it since."""
    card = client.get_model_version(name, version).description or ""
    client.update_model_version(name, version, description=f"{card}\n\n**Since {_now()}**: {note}.".lstrip())


class NothingToRollBack(Exception):
    """The registered model has no champion, or its champion was the first: no earlier version held the alias."""


@dataclass(frozen=True)
class Rollback:
    name: str
    replaced: str  # the version that held `champion` until now
    restored: str  # the version that holds it again
    reason: str
    time: str  # ISO 8601, UTC


def roll_back(client: Any, name: str, reason: str) -> Rollback:
    """Give `champion` back to the version that held it before the current one, as the gate recorded when it
    promoted that one; tag both versions with the reason and the time, as the gate tags its decisions.
    NothingToRollBack when there is no champion or no earlier one."""
    current = champion_version(client, name)
    if current is None:
        raise NothingToRollBack(f"{name} has no {CHAMPION} to roll back")
    previous = client.get_model_version(name, current).tags.get(PREVIOUS_CHAMPION_TAG)
    if previous is None:
        raise NothingToRollBack(f"{name} version {current} is its first {CHAMPION}: no earlier version held the alias")
    done = Rollback(name=name, replaced=current, restored=previous, reason=reason, time=_now())
    for version, tags in ((current, {"rollback.decision": f"{CHAMPION} given back to version {previous}"}),
                          (previous, {"rollback.decision": f"{CHAMPION} again, taken back from version {current}"})):
        for key, value in {**tags, "rollback.reason": reason, "rollback.time": done.time}.items():
            client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHAMPION, previous)
    _note_on_card(client, name, current, f"was `{CHAMPION}` until rolled back to version {previous}: {reason}")
    _note_on_card(client, name, previous, f"`{CHAMPION}` again, taken back from version {current}: {reason}")
    log.info("%s: %s moved back from version %s to version %s (%s)", name, CHAMPION, current, previous, reason)
    return done


def champion_version(client: Any, name: str) -> str | None:
    """The version holding the `champion` alias; None when there is none (or no such registered model)."""
    from mlflow.exceptions import MlflowException

    try:
        alias = client.get_registered_model(name).aliases.get(CHAMPION)
    except MlflowException:
        return None
    return None if alias is None else str(alias)


def logged_model_id(version: Any) -> str | None:
    """The logged model a registered version was made from. MLflow's SQL registry leaves the version's model_id
    empty and keeps the id only in its source, `models:/<model_id>`."""
    if version.model_id:
        return version.model_id
    reference = version.source.removeprefix("models:/") if version.source.startswith("models:/") else ""
    return reference if reference.startswith("m-") and "/" not in reference else None


CHALLENGER = "challenger"


def challenge(client: Any, name: str, version: str, decision: GateDecision) -> None:
    """Tag the challenger version with the decision, give it the `challenger` alias, and move `champion` to it
    when the decision says so."""
    for key, value in decision.as_tags().items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_registered_model_alias(name, CHALLENGER, version)
    if decision.promote:
        _make_champion(client, name, version)
    log.info("challenger %s version %s: %s", name, version, decision.reason)
