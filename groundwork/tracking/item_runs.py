"""Writes a stage's metrics where metric_names routes them: the stage's own run, or a child run per variant,
budget or search method, created on first use and closed with the stage run."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from groundwork.tracking.metric_names import ITEM_GROUPS, MetricNameCollision, Points, route

ITEM_OF_TAG = "item_of"  # on a child run about one variant, budget or method: the stage run's `stage` tag


class MetricWriter:
    """One stage run's metric destinations, through an MLflow client. A final number that repeats the last point
    of a series already logged under its key is not logged again; a different number at a step the key already
    holds is a MetricNameCollision."""

    def __init__(self, client: Any, run: Any) -> None:
        self._client = client
        self._run = run  # the stage's active mlflow Run
        self._item_runs: dict[tuple[str, str], str] = {}
        self._logged: dict[str, dict[str, Points]] = {}  # run id -> key -> points logged so far

    def destinations(self, points: Mapping[str, Sequence[tuple[int, float]]]) -> dict[str, dict[str, Points]]:
        """run id -> key -> the points still to log there (repeats dropped, collisions refused)."""
        routed = route(points)
        by_run = {self._run.info.run_id: routed.own}
        for item, keys in routed.items.items():
            by_run[self.item_run(*item)] = keys
        return {run_id: self._new_points(run_id, keys) for run_id, keys in by_run.items()}

    def _new_points(self, run_id: str, keys: Mapping[str, Points]) -> dict[str, Points]:
        logged = self._logged.setdefault(run_id, {})
        fresh: dict[str, Points] = {}
        for key, points in keys.items():
            before = dict(logged.get(key, []))
            if before and 0 not in before and [step for step, _ in points] == [0]:
                if points[0][1] == logged[key][-1][1]:
                    continue  # a series' final value, logged step by step already
                raise MetricNameCollision(f"metric key '{key}' holds a series ending at {logged[key][-1][1]} in "
                                          f"this run; the number {points[0][1]} needs a name of its own")
            for step, value in points:
                if step in before and before[step] != value:
                    raise MetricNameCollision(f"metric key '{key}' already holds {before[step]} at step {step} "
                                              f"in this run; {value} needs a name of its own")
            fresh[key] = [(step, value) for step, value in points if step not in before]
            logged[key] = logged.get(key, []) + fresh[key]
        return {key: points for key, points in fresh.items() if points}

    def log(self, points: Mapping[str, Sequence[tuple[int, float]]]) -> None:
        """Log each key's (step, value) points, one request per run."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for run_id, keys in self.destinations(points).items():
            if keys:
                self._client.log_batch(run_id, metrics=[Metric(key, float(value), now, step)
                                                        for key, steps in keys.items() for step, value in steps])

    def item_run(self, group: str, item: str) -> str:
        """The child run about `item` of `group` (a variant of `variants`), created on first use."""
        if (group, item) not in self._item_runs:
            tags = self._run.data.tags
            # the run's lineage tags, but not the ones that find a stage's own run (stage, dvc_stage)
            shared = {key: value for key, value in tags.items()
                      if not key.startswith("mlflow.") and key not in ("stage", "dvc_stage")}
            run = self._client.create_run(
                self._run.info.experiment_id, run_name=f"{self._run.info.run_name} · {item}",
                tags={**shared, "mlflow.parentRunId": self._run.info.run_id, ITEM_OF_TAG: tags.get("stage", ""),
                      ITEM_GROUPS[group]: item})
            self._item_runs[group, item] = run.info.run_id
        return self._item_runs[group, item]

    def close(self, status: str) -> None:
        """End every child run with the stage run's status."""
        for run_id in self._item_runs.values():
            self._client.set_terminated(run_id, status=status)
