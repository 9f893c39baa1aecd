"""The champion the adaptive loop watches and learns from, as a folder DVC tracks (models/champion): the fp32
checkpoint behind the served champion, the variant form its served file has, and the ids of the loop's labelled
images it was trained on. The adaptive flow writes it from the Model Registry before each iteration and records it
with `dvc add`, as it records arrivals and labels, so the registry enters the loop's graph as data: monitor, ask
and adapt depend on the folder, adapt's promotion moves the alias, and the next iteration's pointer follows it.
The graph stays acyclic, and `dvc repro adaptive/dvc.yaml` replays an iteration from the same batches, labels and
pointer.

    python -m groundwork.adaptive.champion      # write the pointer for a `dvc repro adaptive/dvc.yaml` by hand
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from groundwork.compression.names import FP32_WEIGHTS
from groundwork.errors import CheckpointError, DataError
from groundwork.models.checkpoint import load_model
from groundwork.tracking.registry import CHAMPION, FORM_TAG, LABELS_LEARNT_FILE, WEIGHTS_TAG
from groundwork.tracking.registry_gate import ModelRegistry

POINTER = Path("models/champion")
WEIGHTS_FILE, MANIFEST_FILE = "champion.pt", "champion.json"


class ChampionError(DataError):
    """No champion the loop can learn from: none registered, or its version lacks what the loop needs."""


@dataclass(frozen=True)
class ChampionPointer:
    """The champion as the loop's stages read it from the pointer folder."""

    model: str
    version: str
    form: str  # a served variant name: how a fine-tuned copy is served (groundwork.compression.names)
    weights: Path
    labels: frozenset[str]  # the loop's labelled images it learnt, by content id (evaluation.champion.image_ids)


def save_pointer(folder: Path, *, model: str, version: str, form: str, weights: Path,
                 labels: Collection[str]) -> ChampionPointer:
    """Write the pointer folder whole or not at all (built beside it, then renamed into place)."""
    if form not in FP32_WEIGHTS:
        raise ChampionError(f"{model} version {version}: unknown form '{form}' (known: {', '.join(FP32_WEIGHTS)})")
    load_model(weights)  # a damaged checkpoint is refused here, naming the file, before the pointer moves
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    shutil.copyfile(weights, building / WEIGHTS_FILE)
    (building / LABELS_LEARNT_FILE).write_text("".join(f"{image_id}\n" for image_id in sorted(set(labels))))
    (building / MANIFEST_FILE).write_text(json.dumps({"model": model, "version": version, "form": form},
                                                     indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    building.rename(folder)
    return read_pointer(folder)


def read_pointer(folder: Path) -> ChampionPointer:
    """The pointer folder's champion; a missing or unreadable part is a ChampionError naming the file."""
    manifest = folder / MANIFEST_FILE
    try:
        fields = json.loads(manifest.read_text())
        labels = frozenset((folder / LABELS_LEARNT_FILE).read_text().split())
    except FileNotFoundError as exc:
        raise ChampionError(f"{exc.filename}: missing; write the champion pointer first "
                            "(python -m groundwork.adaptive.champion, or run the adaptive flow)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ChampionError(f"{manifest}: not the pointer's JSON ({exc})") from None
    if not isinstance(fields, dict) or fields.get("form") not in FP32_WEIGHTS or not all(
            isinstance(fields.get(key), str) for key in ("model", "version")):
        raise ChampionError(f"{manifest}: needs model, version and a known form (one of {', '.join(FP32_WEIGHTS)})")
    return ChampionPointer(fields["model"], fields["version"], fields["form"], folder / WEIGHTS_FILE, labels)


def write_pointer(registry: ModelRegistry, registered_name: str, folder: Path) -> ChampionPointer:
    """Resolve the `champion` alias of `registered_name` and write its pointer folder; the folder is left as it
    was when there is no champion, or its version records no fp32 weights, or they cannot be loaded."""
    with tempfile.TemporaryDirectory() as scratch:
        champion = registry.champion(registered_name, Path(scratch))
        if champion is None:
            raise ChampionError(f"{registered_name}: no version holds the `{CHAMPION}` alias yet; run the pipeline "
                                "first (`make run`)")
        if champion.weights is None or champion.form is None:
            raise ChampionError(
                f"{registered_name} version {champion.version}: its version has no `{WEIGHTS_TAG}` and `{FORM_TAG}` "
                "tags (registered before versions recorded their fp32 weights); run the pipeline (`make run`) to "
                "register a version that does")
        return save_pointer(folder, model=registered_name, version=champion.version, form=champion.form,
                            weights=champion.weights, labels=champion.labels_learnt or ())


def main(argv: Sequence[str] | None = None) -> int:
    """Write the pointer from the project's registry (evaluate.registered_model in params.yaml)."""
    parser = argparse.ArgumentParser(prog="python -m groundwork.adaptive.champion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-dir", type=Path, default=Path("."), help="the DVC project (holds params.yaml)")
    args = parser.parse_args(argv)
    import mlflow

    from groundwork.params import load_params
    from groundwork.tracking.registry_gate import MlflowRegistry
    from groundwork.tracking.runs import tracking_uri

    root = args.project_dir.resolve()
    mlflow.set_tracking_uri(tracking_uri(root))
    try:
        pointer = write_pointer(MlflowRegistry(mlflow), load_params(root / "params.yaml").evaluate.registered_model,
                                root / POINTER)
    except (ChampionError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{root / POINTER}: {pointer.model} version {pointer.version} ({pointer.form}), "
          f"{len(pointer.labels)} of the loop's labels learnt; record it with `dvc add {POINTER}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
