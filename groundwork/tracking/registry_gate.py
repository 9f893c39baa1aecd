"""The Model Registry as a stage reaches it (the ModelRegistry interface): register a logged model, find the
champion, record what a version learnt from, and apply the gate's decision. The rule that decides lives in
groundwork.evaluation.gate, the client-level moves of the aliases in groundwork.tracking.registry. Run logging is
the other interface a stage gets, groundwork.tracking.runs.RunLog."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from groundwork.tracking.registry import (
    CHAMPION,
    FORM_TAG,
    LABELS_LEARNT_FILE,
    LABELS_LEARNT_TAG,
    LEARNT_FROM_FILE,
    LEARNT_FROM_TAG,
    WEIGHTS_TAG,
    Champion,
    GateDecision,
    apply_gate,
    challenge,
    champion_version,
)

Predict = Callable[[torch.Tensor], torch.Tensor]  # uint8 images (N, 28, 28) -> logits (N, classes)


class ModelRegistry(Protocol):
    """What a stage may do in the Model Registry; only evaluate and adapt ask for it."""

    def register_model(self, model_id: str, registered_name: str) -> str | None: ...
    def champion(self, registered_name: str, into: Path) -> Champion | None: ...
    def record_learnt_from(self, registered_name: str, version: str, image_ids: Sequence[str]) -> None: ...
    def record_weights(self, registered_name: str, version: str, checkpoint: Path, *, form: str,
                       labels: Sequence[str]) -> None: ...
    def apply_gate(self, registered_name: str, version: str, decision: GateDecision) -> None: ...
    def set_version_tags(self, registered_name: str, version: str, tags: Mapping[str, str]) -> None: ...
    def champion_predictor(self, registered_name: str) -> Predict | None: ...
    def challenge(self, registered_name: str, version: str, decision: GateDecision) -> None: ...
    def describe(self, registered_name: str, version: str, model_card: str, version_card: str) -> None: ...


class NullRegistry:
    """No registry: nothing registered, no champion, nothing moved. For tests and stages called as functions."""

    def register_model(self, model_id: str, registered_name: str) -> str | None:
        """No registry: no version."""
        return None

    def champion(self, registered_name: str, into: Path) -> Champion | None:
        """No registry, no champion."""
        return None

    def record_learnt_from(self, registered_name: str, version: str, image_ids: Sequence[str]) -> None:
        """No registry: nothing to record."""

    def record_weights(self, registered_name: str, version: str, checkpoint: Path, *, form: str,
                       labels: Sequence[str]) -> None:
        """No registry: nothing to record."""

    def apply_gate(self, registered_name: str, version: str, decision: GateDecision) -> None:
        """No registry: nothing to move."""

    def set_version_tags(self, registered_name: str, version: str, tags: Mapping[str, str]) -> None:
        """No registry: nothing to tag."""

    def champion_predictor(self, registered_name: str) -> Predict | None:
        """No registry, no champion."""
        return None

    def challenge(self, registered_name: str, version: str, decision: GateDecision) -> None:
        """No registry: nothing to move."""

    def describe(self, registered_name: str, version: str, model_card: str, version_card: str) -> None:
        """No registry, nothing to describe."""


class MlflowRegistry:
    """The Model Registry of this process's tracking store; decisions are tagged on its active run as well."""

    def __init__(self, mlflow_module: Any) -> None:
        self._mlflow = mlflow_module

    def register_model(self, model_id: str, registered_name: str) -> str | None:
        """Register a logged model (no copy) as a new version of `registered_name`; return the version."""
        return str(self._mlflow.register_model(f"models:/{model_id}", registered_name).version)

    def champion(self, registered_name: str, into: Path) -> Champion | None:
        """The champion's ONNX file, downloaded into `into`, and the ids of the images it learnt from where its
        version records them; None when there is no champion."""
        client = self._mlflow.MlflowClient()
        version = champion_version(client, registered_name)
        if version is None:
            return None
        local = Path(self._mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{registered_name}/{version}", dst_path=str(into / "model")))
        found = sorted(local.rglob("*.onnx"))
        if not found:
            raise FileNotFoundError(f"models:/{registered_name}/{version}: no ONNX file among its artifacts")
        tags = client.get_model_version(registered_name, version).tags

        def downloaded(tag: str) -> Path | None:
            return None if not tags.get(tag) else Path(self._mlflow.artifacts.download_artifacts(
                artifact_uri=tags[tag], dst_path=str(into / tag)))

        def ids(tag: str) -> frozenset[str] | None:
            listed = downloaded(tag)
            return None if listed is None else frozenset(listed.read_text().split())

        return Champion(version, found[0], ids(LEARNT_FROM_TAG), downloaded(WEIGHTS_TAG), tags.get(FORM_TAG),
                        ids(LABELS_LEARNT_TAG))

    def record_learnt_from(self, registered_name: str, version: str, image_ids: Sequence[str]) -> None:
        """Log the ids of the images a registered version learnt from as this run's artifact, and point the
        version's LEARNT_FROM_TAG at it: a later gate scores both models only on images neither learnt from."""
        artifact = f"registry/{registered_name}-{version}-{LEARNT_FROM_FILE}"
        self._mlflow.log_text("\n".join(image_ids) + "\n", artifact)
        run_id = self._mlflow.active_run().info.run_id
        self._mlflow.MlflowClient().set_model_version_tag(registered_name, version, LEARNT_FROM_TAG,
                                                          f"runs:/{run_id}/{artifact}")

    def record_weights(self, registered_name: str, version: str, checkpoint: Path, *, form: str,
                       labels: Sequence[str]) -> None:
        """Log the fp32 checkpoint behind a registered version's served file and the ids of the loop's labelled
        images it was trained on as this run's artifacts, and point the version's WEIGHTS_TAG and
        LABELS_LEARNT_TAG at them, with the variant form (FORM_TAG) that made the served file: the adaptive loop
        fine-tunes the champion from these weights on the labels it lacks, and serves the result in its form."""
        folder = f"registry/{registered_name}-{version}"
        self._mlflow.log_artifact(str(checkpoint), folder)
        self._mlflow.log_text("".join(f"{image_id}\n" for image_id in labels), f"{folder}/{LABELS_LEARNT_FILE}")
        run = f"runs:/{self._mlflow.active_run().info.run_id}/{folder}"
        self.set_version_tags(registered_name, version, {
            WEIGHTS_TAG: f"{run}/{checkpoint.name}", FORM_TAG: form, LABELS_LEARNT_TAG: f"{run}/{LABELS_LEARNT_FILE}"})

    def apply_gate(self, registered_name: str, version: str, decision: GateDecision) -> None:
        """Tag the version with the gate's decision and move the alias if it promotes; tag this run too."""
        apply_gate(self._mlflow.MlflowClient(), registered_name, version, decision)
        self._mlflow.set_tags({**decision.as_tags(), "gate.version": version})

    def set_version_tags(self, registered_name: str, version: str, tags: Mapping[str, str]) -> None:
        """Tag a registered version (MLflow keeps at most 5,000 characters of a version tag's value)."""
        client = self._mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(registered_name, version, key, value[:5000])

    def champion_predictor(self, registered_name: str) -> Predict | None:
        """The registered champion as a function of uint8 images (N, 28, 28) -> log-probabilities (logits up to
        a constant), loaded through MLflow's pyfunc flavour as a client calls it; None when there is no champion."""
        from mlflow.exceptions import MlflowException

        try:
            self._mlflow.MlflowClient().get_model_version_by_alias(registered_name, CHAMPION)
        except MlflowException:
            return None
        model = self._mlflow.pyfunc.load_model(f"models:/{registered_name}@{CHAMPION}")

        def predict(images: torch.Tensor) -> torch.Tensor:
            output = model.predict(images.numpy())
            return torch.as_tensor(np.log(np.stack(output["probabilities"].tolist())))
        return predict

    def challenge(self, registered_name: str, version: str, decision: GateDecision) -> None:
        """Alias a registered version `challenger` and promote it if the decision says so; tag this run too."""
        challenge(self._mlflow.MlflowClient(), registered_name, version, decision)
        self._mlflow.set_tags({**decision.as_tags(), "gate.version": version})

    def describe(self, registered_name: str, version: str, model_card: str, version_card: str) -> None:
        """Give the registered model and one of its versions their descriptions (markdown, shown in the UI)."""
        client = self._mlflow.MlflowClient()
        client.update_registered_model(registered_name, description=model_card)
        client.update_model_version(registered_name, version, description=version_card)
