"""The metric naming scheme: one key per number, a child run per variant, and a clash caught here rather than in
the UI. The writer runs against a real SQLite tracking store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from groundwork.tracking.metric_names import MetricNameCollision, metric_points, route
from groundwork.tracking.runs import stage_run
from tests.helpers import item_runs


def test_paths_become_dotted_keys_and_class_counts_one_stepped_key() -> None:
    points = metric_points({"test_images": 719, "noise": {"tie": 1.5}, "name": "x", "ok": True,
                            "widths": [8, 16], "source": {"test": {"count": 30, "per_class": {"1": 4, "0": 3}}}})
    assert points == {"test_images": [(0, 719.0)], "noise.tie": [(0, 1.5)], "source.test.count": [(0, 30.0)],
                      "source.test.per_class": [(0, 3.0), (1, 4.0)]}


def test_two_paths_that_flatten_to_one_key_are_refused() -> None:
    with pytest.raises(MetricNameCollision, match=r"'noise\.tie'"):
        metric_points({"noise.tie": 1.0, "noise": {"tie": 2.0}})


def test_items_go_to_their_own_runs_under_the_rest_of_the_path() -> None:
    routed = route({"variants.int8.accuracy": [(0, 0.9)], "variants.structured_int8.round_val_accuracy": [(1, 0.8)],
                    "budgets.all.draws": [(0, 3.0)], "methods.agent.best_reward": [(0, 0.7)],
                    "sparsity": [(0, 0.5)], "variants": [(0, 1.0)]})
    assert routed.own == {"sparsity": [(0, 0.5)], "variants": [(0, 1.0)]}
    assert routed.items == {("variants", "int8"): {"accuracy": [(0, 0.9)]},
                            ("variants", "structured_int8"): {"round_val_accuracy": [(1, 0.8)]},
                            ("budgets", "all"): {"draws": [(0, 3.0)]},
                            ("methods", "agent"): {"best_reward": [(0, 0.7)]}}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_a_stage_run_gets_one_child_run_per_variant_closed_with_it(store: MlflowClient) -> None:
    with stage_run("evaluate", {}) as tracker:
        for epoch, value in enumerate((0.5, 0.7), start=1):
            tracker.log_metrics({"val_accuracy": value, "variants.int8.round_val_accuracy": value}, step=epoch)
        tracker.log_metrics_json({"test_images": 10, "val_accuracy": 0.7,  # the series' final value: not again
                                  "variants": {"int8": {"accuracy": 0.9}, "fp32": {"accuracy": 0.95}}})
        stage_id = mlflow.active_run().info.run_id
    stage_metrics = store.get_run(stage_id).data.metrics
    assert stage_metrics == {"test_images": 10.0, "val_accuracy": 0.7}
    assert [m.value for m in store.get_metric_history(stage_id, "val_accuracy")] == [0.5, 0.7]
    runs = item_runs(store, stage_id, "variant")
    assert sorted(runs) == ["fp32", "int8"]
    assert runs["int8"].data.metrics == {"accuracy": 0.9, "round_val_accuracy": 0.7}
    assert runs["int8"].info.run_name == f"{store.get_run(stage_id).info.run_name} · int8"
    assert all(run.info.status == "FINISHED" and run.data.tags["item_of"] == "evaluate" for run in runs.values())
    assert "stage" not in runs["int8"].data.tags, "a stage's own run stays the only one tagged with its stage"


def test_a_second_number_under_a_used_key_fails_the_stage_naming_the_key(store: MlflowClient) -> None:
    with (pytest.raises(MetricNameCollision, match=r"'val_accuracy' holds a series ending at 0\.7"),
          stage_run("pretrain", {}) as tracker):
        tracker.log_metrics({"val_accuracy": 0.7}, step=1)
        tracker.log_metrics_json({"val_accuracy": 0.9})  # a best-epoch value under the series' name
    with (pytest.raises(MetricNameCollision, match=r"'x' already holds 1\.0 at step 0"),
          stage_run("compress", {}) as tracker):
        tracker.log_metrics({"variants.a.x": 1.0})
        tracker.log_metrics({"variants.a.x": 2.0})
    statuses = {run.info.run_name: run.info.status for run in store.search_runs(
        [store.get_experiment_by_name("groundwork").experiment_id])}
    assert set(statuses.values()) == {"FAILED"}, statuses  # the stage runs and the variant's run


def test_a_variants_model_metrics_are_its_child_runs(store: MlflowClient) -> None:
    with stage_run("evaluate", {}) as tracker:
        model_id = mlflow.initialize_logged_model(name="int8").model_id
        tracker.log_model_metrics(model_id, {"variants.int8.accuracy": 0.9}, dataset=None)
        tracker.log_metrics_json({"variants": {"int8": {"accuracy": 0.9}}})  # the same number: logged once
        stage_id = mlflow.active_run().info.run_id
    child = item_runs(store, stage_id, "variant")["int8"]
    assert [(m.key, m.value) for m in store.get_metric_history(child.info.run_id, "accuracy")] == [("accuracy", 0.9)]
    [metric] = store.get_logged_model(model_id).metrics
    assert (metric.key, metric.value, metric.run_id) == ("accuracy", 0.9, child.info.run_id)
