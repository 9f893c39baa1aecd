"""What a flow run reports as Prefect artifacts: a markdown summary and a table of the model variants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flows.repro import StageResult
from groundwork.evaluation.variant_table import number, percent, size, smaller, variant_row
from groundwork.tracking.runs import NOTE_TAG as NOTE


def _report(root: Path, stage: str) -> dict[str, Any]:
    """reports/<stage>.json, or {} when the stage has not produced it (e.g. the run failed before it)."""
    try:
        return json.loads((root / "reports" / f"{stage}.json").read_text())
    except (OSError, ValueError):
        return {}


# MLflow 3's UI opens every experiment in its GenAI view (traces, "agent versions") unless the address asks for the
# Model training one: that toggle is kept per browser, and while the UI shows it, the experiment's
# `mlflow.experimentKind` tag is not read. So every address the project prints asks.
MODEL_TRAINING_VIEW = "?workflowType=machine_learning"


def mlflow_address(tracking_uri: str, experiment_id: str, run_id: str | None = None, *,
                   ui: str = "http://127.0.0.1:5000") -> str:
    """Where the experiment (or one of its runs) is in the MLflow UI, in its Model training view: on the server
    itself, or on `ui` (`groundwork ui`'s address) for a local store."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else ui
    run = "" if run_id is None else f"/runs/{run_id}"
    return f"{base}/#/experiments/{experiment_id}{run}{MODEL_TRAINING_VIEW}"


def variant_rows(root: Path) -> list[dict[str, Any]]:
    """One row per model variant from reports/evaluate.json (empty before evaluate has run), the chosen one
    marked: eight columns a screen shows, numbers formatted (reports/evaluate.json and MLflow keep every figure)."""
    report = _report(root, "evaluate")
    chosen = report.get("selection", {}).get("chosen")
    return [{"variant": f"{name} (registered)" if name == chosen else name, **variant_row(row)}
            for name, row in report.get("variants", {}).items()]


Headline = tuple[dict[str, float], dict[str, str]]  # a flow's parent run: (metrics, tags)


def pipeline_headline(root: Path) -> Headline:
    """What a pipeline run's parent run shows on its overview: source and target accuracy, the registered variant's
    accuracy, size and speed, the registered model and version and the gate's decision, and a description."""
    transfer, evaluate = _report(root, "transfer"), _report(root, "evaluate")
    registry, chosen = evaluate.get("registry", {}), evaluate.get("selection", {}).get("chosen")
    scores = evaluate.get("variants", {}).get(chosen, {})
    metrics = {"source_test_accuracy": _report(root, "pretrain").get("source_test_accuracy"),
               "transfer_accuracy": transfer.get("transfer_accuracy"),
               "registered_accuracy": scores.get("accuracy"),
               "registered_times_smaller": scores.get("times_smaller_than_fp32_state_dict"),
               "registered_throughput_vs_fp32_onnx": scores.get("throughput_vs_fp32_onnx")}
    tags: dict[str, str] = {}
    if registry.get("registered"):
        decision = "promoted to champion" if registry["promoted"] else "not promoted: the champion stays"
        tags = {"registered_model": str(registry["model"]), "registered_version": str(registry["version"]),
                "registered_variant": str(registry["variant"]), "gate_decision": decision,
                NOTE: f"Registered `{registry['model']}` version {registry['version']} ({registry['variant']}): "
                      f"{decision}. {registry['reason']}. Accuracy on the target test split "
                      f"{percent(scores.get('accuracy'))}, {scores.get('times_smaller_than_fp32_state_dict', 0):.1f}x "
                      f"smaller than the fp32 state dict, {scores.get('throughput_vs_fp32_onnx', 0):.2f}x fp32 ONNX's "
                      f"throughput; transfer {percent(transfer.get('transfer_accuracy'))} with "
                      f"{transfer.get('train_images', '?')} labels. The stages are the child runs."}
    return {key: float(value) for key, value in metrics.items() if isinstance(value, int | float)}, tags


def adaptive_headline(root: Path) -> Headline:
    """What an adaptive run's parent run shows: drift alarms, labels used, whether the challenger was promoted."""
    monitor, adapt = _report(root, "adaptive/monitor"), _report(root, "adaptive/adapt")
    metrics = {"drift_alarms": monitor.get("alarms"), "labels_used": adapt.get("train_labels"),
               "promoted": float(bool(adapt.get("promoted")))}
    decision = ("promoted the challenger" if adapt.get("promoted")
                else "adapted, not promoted" if adapt.get("adapted") else "not adapted")
    note = (f"{monitor.get('alarms', 0)} drift alarm(s) over {monitor.get('batches', 0)} batch(es); "
            f"{adapt.get('train_labels', 0)} new label(s) used; {decision}: {adapt.get('reason', 'n/a')}.")
    return ({key: float(value) for key, value in metrics.items() if isinstance(value, int | float)},
            {"gate_decision": decision, NOTE: note})


def summary_markdown(root: Path, results: list[StageResult], *, status: str, mlflow_url: str,
                     experiment: str | None = None) -> str:
    """The flow run in a page: each stage ran or skipped and how long, headline metrics, the gate's decision."""
    lines = [f"# groundwork pipeline: {status.lower()}", "", f"MLflow run: [{mlflow_url}]({mlflow_url})", "",
             "| stage | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {r.stage} | {r.status} | {'-' if r.seconds is None else f'{r.seconds:.1f}'} |" for r in results]
    if experiment is not None:
        return "\n".join([*lines, "", f"DVC experiment `{experiment}`: its params, metrics and outputs are in "
                           f"`dvc exp show` (the working tree is unchanged) and its MLflow runs carry the tag "
                           f"`dvc_experiment={experiment}`."]) + "\n"
    pretrain, transfer, registry = _report(root, "pretrain"), _report(root, "transfer"), \
        _report(root, "evaluate").get("registry", {})
    lines += ["", "## Headline metrics", "",
              f"- source test accuracy (pretrain): {percent(pretrain.get('source_test_accuracy'))}",
              f"- target test accuracy with {transfer.get('train_images', '?')} labels: "
              f"transfer {percent(transfer.get('transfer_accuracy'))}, "
              f"from scratch {percent(transfer.get('scratch_accuracy'))}, "
              f"source-only {percent(transfer.get('source_only_accuracy'))} "
              f"(gain {transfer.get('gain_points', 'n/a')} points)"]
    search = _report(root, "search")
    if search:
        best = {name: percent(method.get("best_reward")) for name, method in search.get("methods", {}).items()}
        lines.append(f"- policy search ({search.get('agent')}, {search.get('episodes')} episodes, within "
                     f"{search.get('budget')}), validation accuracy before "
                     f"fine-tuning: agent {best.get('agent')}, random search {best.get('random')}, uniform "
                     f"{best.get('uniform')}, global ranking {best.get('global_ranking')}")
    for name, row in _report(root, "evaluate").get("variants", {}).items():
        significance = ("significantly different from fp32" if row.get("significant_vs_fp32")
                        else "no significant difference from fp32")
        lines.append(f"- `{name}`: accuracy {percent(row.get('accuracy'))} "
                     f"[{percent(row.get('accuracy_low'))}, {percent(row.get('accuracy_high'))}] "
                     f"({significance}, McNemar p = {row.get('vs_fp32_p_value', float('nan')):.3g}), "
                     f"{size(row.get('bytes'))} ({smaller(row.get('times_smaller_than_fp32_state_dict'))}, against "
                     f"the fp32 state dict), p50 latency {number(row.get('latency_p50_ms'), '.3f')} ms, "
                     f"{row.get('throughput_vs_fp32_onnx', 0):.2f}x fp32_onnx's throughput "
                     f"[{row.get('throughput_vs_fp32_onnx_low', 0):.2f}, "
                     f"{row.get('throughput_vs_fp32_onnx_high', 0):.2f}]")
    selection = _report(root, "evaluate").get("selection", {})
    if selection:
        lines += ["", "## Which model ships", "", f"Rule: {selection['rule']}.", ""]
        lines += [f"- `{name}`: {why}" for name, why in selection["standings"].items()]
        if selection.get("dominated_by"):
            lines.append(f"- warning: `{selection['chosen']}` is dominated by {', '.join(selection['dominated_by'])}")
    if registry.get("registered"):
        verdict = "promoted to `champion`" if registry["promoted"] else "not promoted; the champion stays"
        lines += ["", "## Model Registry", "",
                  f"`{registry['model']}` version {registry['version']} ({registry['variant']}): {verdict}. "
                  f"{registry['reason']}.", "",
                  f"Serve the champion over HTTP with `groundwork serve` (`models:/{registry['model']}@champion`)."]
    return "\n".join(lines) + "\n"


def adaptive_markdown(root: Path, results: list[StageResult], *, status: str, mlflow_url: str) -> str:
    """One loop iteration in a page: the stages, what the monitor found, what was asked, what the gate decided."""
    lines = [f"# groundwork adaptive loop: {status.lower()}", "", f"MLflow run: [{mlflow_url}]({mlflow_url})", "",
             "| stage | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {r.stage.rpartition(':')[2]} | {r.status} | {'-' if r.seconds is None else f'{r.seconds:.1f}'} |"
              for r in results]
    monitor, ask, adapt = (_report(root, f"adaptive/{stage}") for stage in ("monitor", "ask", "adapt"))
    lines += ["", "## Drift", "", f"- {monitor.get('batches', 0)} batch(es) of {monitor.get('images', 0)} images, "
              f"{monitor.get('alarms', 0)} alarm(s); latest: {monitor.get('latest_reason', 'n/a')}"]
    lines += [f"- set aside `{name}`: {reason}" for name, reason in monitor.get("set_aside", {}).items()]
    lines += [f"- `{name}` repeats `{first}`: counted once" for name, first in monitor.get("duplicates", {}).items()]
    lines += ["", "## Labelling queue", "",
              f"- {ask.get('queued', 0)} image(s) queued ({ask.get('holdout_queued', 0)} holdout, the rest by "
              f"{ask.get('strategy', 'n/a')}); {ask.get('labels_given', 0)} label(s) given so far; "
              f"{ask.get('reason', 'n/a')}", "- fill in `label` in reports/adaptive/queue/queue.csv (images beside "
              "it, all of them on sheet.png) and save it into data/labels/"]
    lines += ["", "## Challenger", ""]
    if adapt.get("adapted"):
        challenger, incumbent = adapt["challenger"], adapt["incumbent"]
        lines += [f"- trained on {adapt['train_labels']} new label(s) and {adapt['replayed']} replayed image(s)",
                  f"- holdout ({adapt['holdout_labels']} images of the new distribution): challenger "
                  f"{percent(challenger['holdout_accuracy'])}, {adapt['incumbent_model']} "
                  f"{percent(incumbent['holdout_accuracy'])}",
                  f"- original target test split: challenger {percent(challenger['original_accuracy'])}, "
                  f"incumbent {percent(incumbent['original_accuracy'])}",
                  f"- decision: {adapt['reason']}"]
    else:
        lines.append(f"- not adapted: {adapt.get('reason', 'the stage did not run')}")
    return "\n".join(lines) + "\n"
