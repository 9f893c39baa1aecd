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
    from groundwork.params.data import DataSource
    from groundwork.tracking.runs import RunLog

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# the modules a logged copy imports, copied as a package tree MLflow puts on sys.path when it loads the model
SERVED_CODE = ("groundwork/__init__.py", "groundwork/data/__init__.py", "groundwork/data/canvas.py",
               "groundwork/data/untrusted.py", "groundwork/serving/__init__.py", "groundwork/serving/capture.py",
               "groundwork/serving/classifier.py")
# the served environment: MLflow (its scoring server) and what the classifier imports; distribution names, pinned
# to this environment. No cloudpickle: the model is logged from code, nothing of it is pickled.
SERVED_PACKAGES = ("mlflow", "numpy", "pandas", "pillow", "onnxruntime")
# the logged model's code file (MLflow's models from code): loading the model runs it, building the classifier
# from the code the model carries
MODEL_CODE = ("from mlflow.models import set_model\n\nfrom groundwork.serving.classifier import DigitClassifier\n\n"
              "set_model(DigitClassifier())\n")
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


def input_example() -> list[str]:
    """What a client sends, for the model's page and `mlflow models predict`: one PNG file of a stroke (a crude
    1, light on black), base64-encoded."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    stroke = np.zeros((28, 28), np.uint8)
    stroke[4:24, 12:16] = 255
    buffer = io.BytesIO()
    Image.fromarray(stroke).save(buffer, format="PNG")
    return [base64.b64encode(buffer.getvalue()).decode()]


def signature() -> Any:
    """Outputs only: a class and its probabilities per image. No input schema, since MLflow would then refuse
    every request not shaped as the schema says; the classifier checks its input itself."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array

    return ModelSignature(inputs=None, outputs=Schema([ColSpec("long", "class"),
                                                       ColSpec(Array("double"), "probabilities")]))


def log_served_model(tracker: RunLog, path: Path, name: str, contract: dict[str, Any]) -> str | None:
    """Log the ONNX file at `path` as the served classifier named `name` (groundwork.serving.classifier),
    tagged with the file's digest and the variant's name; return the logged model's id (None: no tracking).
    `contract` is served_contract's model config."""
    from groundwork.serving.classifier import ONNX_ARTIFACT

    with tempfile.TemporaryDirectory() as folder:
        model_code = Path(folder) / "served_model.py"
        model_code.write_text(MODEL_CODE)
        return tracker.log_pyfunc_model({
            "name": name, "python_model": str(model_code), "artifacts": {ONNX_ARTIFACT: str(path)},
            "code_paths": [str(code_tree(Path(folder) / "code"))], "model_config": contract,
            "pip_requirements": requirements(), "signature": signature(), "input_example": input_example(),
            "tags": {FILE_DIGEST_TAG: file_digest(path), VARIANT_TAG: name}})


def find_served_model(tracker: RunLog, path: Path) -> str | None:
    """The latest served model logged from exactly the file at `path` (by digest) in this experiment; None
    when there is none (the stage that wrote it ran without tracking, or against another store)."""
    return tracker.find_logged_model({FILE_DIGEST_TAG: file_digest(path)})
