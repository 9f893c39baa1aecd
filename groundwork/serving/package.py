"""The served classifier as a logged MLflow model: beside its ONNX file, the code it imports (the classifier and
the input contract, nothing of the training stack), the environment it declares, its output schema, and the tags
by which evaluate finds the model compress logged from a file."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from groundwork.params import DataSource
    from groundwork.tracking.runs import Tracker

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# the modules a logged copy imports, copied as a package tree MLflow puts on sys.path when it loads the model
SERVED_CODE = ("groundwork/__init__.py", "groundwork/data/__init__.py", "groundwork/data/canvas.py",
               "groundwork/data/untrusted.py", "groundwork/serving/__init__.py", "groundwork/serving/classifier.py")
# the served environment: MLflow's scoring server with cloudpickle (the pyfunc's own defaults), and what the
# classifier imports; distribution names, pinned to this environment
SERVED_PACKAGES = ("mlflow", "cloudpickle", "numpy", "pandas", "pillow", "onnxruntime")
FILE_DIGEST_TAG = "file_sha256"  # on a logged model: the digest of the ONNX file inside, how evaluate finds it
VARIANT_TAG = "variant"


def code_tree(into: Path) -> Path:
    """Copy SERVED_CODE under `into`; return the `groundwork` folder to pass as MLflow's code_paths."""
    for relative in SERVED_CODE:
        target = into / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_ROOT / relative, target)
    return into / "groundwork"


def requirements() -> list[str]:
    """SERVED_PACKAGES pinned to the versions installed here."""
    return [f"{package}=={version(package)}" for package in SERVED_PACKAGES]


def file_digest(path: Path | str) -> str:
    """sha256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def served_contract(target: DataSource) -> dict[str, Any]:
    """The model config of a served classifier: how ingest fits the target's digits (the longer side's `size`,
    `color` to gray), which the classifier applies to a request's images."""
    return {"size": target.size, "color": target.color}


def signature() -> Any:
    """Outputs only: a class and its probabilities per image. No input schema, since MLflow would then refuse
    every request not shaped as the schema says; the classifier checks its input itself."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array

    return ModelSignature(inputs=None, outputs=Schema([ColSpec("long", "class"),
                                                       ColSpec(Array("double"), "probabilities")]))


def log_served_model(tracker: Tracker, path: Path, name: str, contract: dict[str, Any]) -> str | None:
    """Log the ONNX file at `path` as the served classifier named `name` (groundwork.serving.classifier),
    tagged with the file's digest and the variant's name; return the logged model's id (None: no tracking).
    `contract` is served_contract's model config."""
    from groundwork.serving.classifier import ONNX_ARTIFACT, DigitClassifier

    with tempfile.TemporaryDirectory() as code:
        return tracker.log_pyfunc_model({
            "name": name, "python_model": DigitClassifier(), "artifacts": {ONNX_ARTIFACT: str(path)},
            "code_paths": [str(code_tree(Path(code)))], "model_config": contract,
            "pip_requirements": requirements(), "signature": signature(),
            "tags": {FILE_DIGEST_TAG: file_digest(path), VARIANT_TAG: name}})


def find_served_model(tracker: Tracker, path: Path) -> str | None:
    """The latest served model logged from exactly the file at `path` (by digest) in this experiment; None
    when there is none (the stage that wrote it ran without tracking, or against another store)."""
    return tracker.find_logged_model({FILE_DIGEST_TAG: file_digest(path)})
