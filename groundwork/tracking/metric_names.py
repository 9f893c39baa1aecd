"""The naming scheme of MLflow metric keys: one name per number, and few names (docs/tracking.md says it for
users).

- A stage's keys are the paths of its metrics JSON, the names `dvc metrics show` prints, joined with dots:
  `noise.tie_upper_bound_points_at_12_discordant`. Code that logs a number outside the JSON names it the same way.
- A number about one of several like things (a model variant, a label budget, a search method: the ITEM_GROUPS)
  goes to that thing's own child run, under the rest of its path: evaluate's `variants.int8.accuracy` is the
  `accuracy` of the run `evaluate · <flow run> · int8`. The runs table then compares the variants row by row in
  one `accuracy` column, and the stage run never holds one key for several models.
- A count per class (a mapping keyed 0, 1, ..., n-1) is one key stepped by the class.
- A series over epochs, rounds, episodes or draws is one key stepped by that index and named for what it is
  (`round_val_accuracy`, `episode_reward`), never the name of a final number.

Two numbers that would land on one key of one run are refused (MetricNameCollision), so a clash fails a test
instead of overwriting a value in the UI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Points = list[tuple[int, float]]  # (step, value)

# the metrics JSON's groups of like things -> the run tag naming which one a child run is about
ITEM_GROUPS = {"variants": "variant", "budgets": "budget", "methods": "method"}


class MetricNameCollision(ValueError):
    """Two different numbers were given one metric key in one run."""


@dataclass
class Routed:
    """Where each point goes: the stage run's own keys, and each item's child run's keys."""

    own: dict[str, Points] = field(default_factory=dict)
    items: dict[tuple[str, str], dict[str, Points]] = field(default_factory=dict)  # (group, item) -> key -> points


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_class_counts(value: Mapping[str, Any]) -> bool:
    """A mapping keyed '0' .. 'n-1' (in any order) with a number at each key: a per-class series."""
    return bool(value) and sorted(map(str, value)) == sorted(map(str, range(len(value)))) and all(
        _is_number(v) for v in value.values())


def metric_points(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Points]:
    """A metrics JSON's numbers under their dotted paths, per-class counts as one stepped key; strings, lists
    and booleans are not metrics. Raises MetricNameCollision when two paths flatten to one key."""
    points: dict[str, Points] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and _is_class_counts(value):
            found = {name: [(int(k), float(v)) for k, v in sorted(value.items(), key=lambda kv: int(kv[0]))]}
        elif isinstance(value, Mapping):
            found = metric_points(value, f"{name}.")
        elif _is_number(value):
            found = {name: [(0, float(value))]}
        else:
            continue
        for clash in found.keys() & points.keys():
            raise MetricNameCollision(f"metric key '{clash}' is given twice in one run: rename one of them")
        points |= found
    return points


def route(points: Mapping[str, Sequence[tuple[int, float]]]) -> Routed:
    """Split dotted keys between the stage run and its items' child runs, as the module's scheme says."""
    routed = Routed()
    for key, steps in points.items():
        group, _, rest = key.partition(".")
        item, _, leaf = rest.partition(".")
        if group in ITEM_GROUPS and item and leaf:
            routed.items.setdefault((group, item), {})[leaf] = list(steps)
        else:
            routed.own[key] = list(steps)
    return routed
