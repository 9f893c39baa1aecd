"""The README's results table, written from a finished run's reports, never by hand.

Three steps, each a command (`python -m groundwork.report <step> --help`, or `groundwork report <step>`):

- `collect` reads a finished run's `reports/*.json` (pretrain, transfer, evaluate) and writes the headline numbers
  to the committed results file (`docs/results.json`) with where they come from: the run's git commit, the date its
  evaluate report was written, the CPU and the core count. Then it renders them into the README.
- `render` writes the table of the committed results file into README.md, between the markers
  `<!-- results:start -->` and `<!-- results:end -->`.
- `check` exits 1 with a one-line message when README.md differs from what `render` would write.

Standard library only, so that the check and the test that runs it import nothing heavy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

START = "<!-- results:start -->"
END = "<!-- results:end -->"
RESULTS_FILE = Path("docs/results.json")
README_FILE = Path("README.md")
FORMAT = 1

EXIT_OK, EXIT_STALE, EXIT_BAD_INPUT = 0, 1, 2

# what the results file keeps of each variant in reports/evaluate.json
VARIANT_KEYS = ("accuracy", "accuracy_low", "accuracy_high", "vs_fp32_losses", "vs_fp32_wins",
                "vs_fp32_loss_upper_points", "bytes", "times_smaller_than_fp32_state_dict",
                "throughput_vs_fp32_onnx", "throughput_vs_fp32_onnx_low", "throughput_vs_fp32_onnx_high")
PRETRAIN_KEYS = ("train_images", "source_test_accuracy")
TRANSFER_KEYS = ("mode", "head", "semi_supervised", "train_images", "source_only_accuracy", "scratch_accuracy",
                 "transfer_accuracy")
REGISTRY_KEYS = ("registered", "model", "version", "variant", "promoted", "reason")


class ReportError(Exception):
    """A report or README the command cannot use; the message says which and why."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: missing (has the run finished?)") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return data


def _pick(data: Mapping[str, Any], keys: Sequence[str], where: str) -> dict[str, Any]:
    missing = [key for key in keys if key not in data]
    if missing:
        raise ReportError(f"{where}: missing {', '.join(missing)}")
    return {key: data[key] for key in keys}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_commit(project_dir: Path) -> str:
    """The commit checked out in the project (the code the run's stages ran), or "unknown" outside git."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, text=True,
                              check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def collect(project_dir: Path, command: str = "make run") -> dict[str, Any]:
    """The results file's content, from the project's finished run (its reports/ and its git commit)."""
    reports = project_dir / "reports"
    evaluate_path = reports / "evaluate.json"
    evaluate = _read_json(evaluate_path)
    pretrain = _read_json(reports / "pretrain.json")
    transfer = _read_json(reports / "transfer.json")
    variants = evaluate.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ReportError(f"{evaluate_path}: no variants")
    selection = evaluate.get("selection") or {}
    written = datetime.datetime.fromtimestamp(evaluate_path.stat().st_mtime, tz=datetime.UTC)
    return {
        "format": FORMAT,
        "provenance": {"command": command, "commit": git_commit(project_dir),
                       "date": written.strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
                       "cores": os.cpu_count() or 0},
        "test_images": evaluate.get("test_images"),
        "pretrain": _pick(pretrain, PRETRAIN_KEYS, "pretrain.json"),
        "transfer": _pick(transfer, TRANSFER_KEYS, "transfer.json"),
        "variants": {name: _pick(scores, VARIANT_KEYS, f"evaluate.json: variant {name}")
                     for name, scores in variants.items()},
        "selection": {"chosen": selection.get("chosen"), "rule": selection.get("rule"),
                      "dominated_by": selection.get("dominated_by", [])},
        "registry": {key: (evaluate.get("registry") or {}).get(key) for key in REGISTRY_KEYS},
    }


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def _size(count: float) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.2f} MiB"
    return f"{count / 1024:.1f} KiB"


def _ratio(value: float, low: float, high: float) -> str:
    if low == high == value:
        return f"{value:.2f}x"
    return f"{value:.2f}x [{low:.2f}, {high:.2f}]"


def render_table(results: Mapping[str, Any]) -> str:
    """The README's results block (between the markers, markers excluded): provenance, one table, the decision."""
    try:
        return _render(results)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"results file: missing or malformed entry ({exc!r})") from None


def _render(results: Mapping[str, Any]) -> str:
    source, pretrain, transfer = results["provenance"], results["pretrain"], results["transfer"]
    chosen = results["selection"]["chosen"]
    registry = results["registry"]
    lines = [
        f"Measured by `{source['command']}` at commit `{source['commit'][:12]}` on {source['date']}, "
        f"{source['cpu']} ({source['cores']} cores); written by `groundwork report collect` into "
        f"`docs/results.json`. Accuracy on the target's {results['test_images']} test images with its 95% interval;"
        " images lost and won against fp32 on the same images; file size of the deployable file and how many times"
        " smaller than fp32's state dict; throughput against `fp32_onnx`, timed in interleaved rounds.",
        "",
        "| variant | accuracy [95% CI] | vs fp32: lost / won | file | x smaller | throughput x fp32_onnx [95% CI] |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, scores in results["variants"].items():
        label = f"**{name}** (registered)" if name == chosen else name
        speed = _ratio(scores["throughput_vs_fp32_onnx"], scores["throughput_vs_fp32_onnx_low"],
                       scores["throughput_vs_fp32_onnx_high"])
        lines.append(
            f"| {label} | {_percent(scores['accuracy'])} [{_percent(scores['accuracy_low'])}, "
            f"{_percent(scores['accuracy_high'])}] | {scores['vs_fp32_losses']} / {scores['vs_fp32_wins']} | "
            f"{_size(scores['bytes'])} | {scores['times_smaller_than_fp32_state_dict']:.1f} | {speed} |")
    lines += [
        "",
        f"Source: {_percent(pretrain['source_test_accuracy'])} on the source's held-out test digits after pretraining "
        f"on {pretrain['train_images']:,} images. Target, {transfer['train_images']} labelled images: source-only "
        f"{_percent(transfer['source_only_accuracy'])}, from scratch {_percent(transfer['scratch_accuracy'])}, "
        f"transfer {_percent(transfer['transfer_accuracy'])} ({transfer['mode']}, head {transfer['head']}, "
        f"semi-supervised {transfer['semi_supervised']}).",
        "",
    ]
    dominated = results["selection"].get("dominated_by") or []
    decision = f"Registered: `{chosen}`"
    if registry.get("registered"):
        decision += f" as version {registry['version']} of `{registry['model']}`"
        decision += "; promoted to champion" if registry.get("promoted") else "; the champion stays"
        decision += f" ({registry['reason']})."
    else:
        decision += " (not registered in this run)."
    decision += f" Dominated by: {', '.join(dominated)}." if dominated else ""
    lines.append(decision)
    return "\n".join(lines)


def render_readme(readme: str, results: Mapping[str, Any]) -> str:
    """README text with the block between the markers replaced by the results file's table."""
    block(readme)
    start, end = readme.find(START), readme.find(END)
    return readme[:start + len(START)] + "\n" + render_table(results) + "\n" + readme[end:]


def block(readme: str) -> str:
    """What the README holds between the markers."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ReportError(f"README has no {START} ... {END} block")
    return readme[start + len(START):end].strip()


def stale(readme_path: Path, results_path: Path) -> str | None:
    """None when the README holds the render of the results file (or, before any results file is committed, an
    empty block: never figures typed by hand), else why not (one line)."""
    readme = readme_path.read_text(encoding="utf-8")
    if not results_path.exists():
        if block(readme):
            return (f"{readme_path}: figures between the results markers, but no {results_path} they were rendered "
                    "from; run `groundwork report collect` on a finished run and commit both")
        return None
    if render_readme(readme, _read_json(results_path)) != readme:
        return (f"{readme_path}: the results table differs from {results_path} rendered; "
                "run `groundwork report render` (or `python -m groundwork.report render`) and commit both")
    return None


def write_results(results: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def render_into(readme_path: Path, results_path: Path) -> bool:
    """Render the results file into the README; True when the README changed."""
    readme = readme_path.read_text(encoding="utf-8")
    rendered = render_readme(readme, _read_json(results_path))
    if rendered == readme:
        return False
    tmp = readme_path.with_name(readme_path.name + ".tmp")
    tmp.write_text(rendered, encoding="utf-8")
    tmp.replace(readme_path)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The step and its files: shared by `python -m groundwork.report` and `groundwork report`."""
    parser.add_argument("step", choices=("collect", "render", "check"),
                        help="collect: a run's reports into the results file, then render; render: the results "
                        "file into README.md; check: exit 1 when README.md differs from the render")
    parser.add_argument("--run-dir", type=Path, default=argparse.SUPPRESS,
                        help="collect: the finished run's project (its reports/ and git commit; default: "
                        "--project-dir)")
    parser.add_argument("--command", default="make run", help="collect: the command that made the run, as recorded")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE,
                        help="the committed results file, relative to the project")
    parser.add_argument("--readme", type=Path, default=README_FILE, help="the README, relative to the project")


def run(args: argparse.Namespace) -> int:
    """Do the step; ReportError and a missing file are bad input (exit 2), a stale README exit 1."""
    project = Path(getattr(args, "project_dir", None) or ".")
    results_path, readme_path = project / args.results, project / args.readme
    try:
        if args.step == "collect":
            results = collect(getattr(args, "run_dir", None) or project, command=args.command)
            write_results(results, results_path)
            print(f"wrote {results_path} (commit {results['provenance']['commit'][:12]}, "
                  f"{results['provenance']['date']})")
        if args.step in ("collect", "render"):
            changed = render_into(readme_path, results_path)
            print(f"{readme_path}: {'table rendered' if changed else 'already up to date'}")
            return EXIT_OK
        why = stale(readme_path, results_path)
    except (ReportError, OSError) as exc:
        print(f"groundwork report {args.step}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if why:
        print(why, file=sys.stderr)
        return EXIT_STALE
    if not results_path.exists():
        print(f"{readme_path}: no {results_path} yet, and no figures between the results markers")
    else:
        print(f"{readme_path}: the results table matches {results_path}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m groundwork.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-dir", type=Path, default=Path("."), help="the project (holds README.md)")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
