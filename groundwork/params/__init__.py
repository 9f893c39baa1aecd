"""Typed, validated view of params.yaml: one frozen model per section, checked once before any work. The sections
live in this package's modules by what they configure (data, training, compression, adaptive); this one puts them
together into Params and reads, overrides and validates a params file."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from groundwork.data.untrusted import read_yaml
from groundwork.models.geometry import MIN_EMBEDDING, MIN_WIDTH
from groundwork.params.adaptive import AdaptiveParams
from groundwork.params.base import Section
from groundwork.params.compression import CompressParams, EvaluateParams, SearchParams
from groundwork.params.data import AugmentParams, IngestParams
from groundwork.params.training import BudgetParams, ModelParams, PretrainParams, TransferParams

DEFAULT_PARAMS_PATH = Path("params.yaml")


class ParamsError(ValueError):
    """A params file that cannot be used; the message names every bad key and why."""


class TrackingParams(Section):
    """What every stage's MLflow run records besides its params, metrics, models and artifacts."""

    system_metrics: bool = Field(description="sample CPU, memory, disk and network use (and the GPU's, when there "
                                             "is one) while the stage runs, as MLflow's system/* metrics")
    system_metrics_interval: float = Field(ge=0.1, le=600.0, description="seconds between system metrics samples")


class Params(Section):
    """The whole params.yaml."""

    seed: int = Field(ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["fp32", "auto", "bf16"] = Field(
        description="training steps' arithmetic: fp32, auto (bf16 mixed precision where the device runs bf16 "
                    "natively, else fp32), or bf16 (mixed precision even where emulated)")
    model: ModelParams
    ingest: IngestParams
    augment: AugmentParams
    pretrain: PretrainParams
    transfer: TransferParams
    budget: BudgetParams
    search: SearchParams
    compress: CompressParams
    evaluate: EvaluateParams
    adaptive: AdaptiveParams
    tracking: TrackingParams

    @model_validator(mode="after")
    def _structured_network_is_valid(self) -> Params:
        keep, model = self.compress.channels_kept, self.model
        if any(math.ceil(width * keep) < floor for width, floor in
               zip(model.layer_widths(), model.layer_floors(), strict=True)):
            raise ValueError(f"compress.channels_kept={keep} leaves a prunable layer of the model (widths "
                             f"{list(model.layer_widths())}) below {MIN_WIDTH} channels, or its embedding below "
                             f"{MIN_EMBEDDING} units")
        return self

    @model_validator(mode="after")
    def _search_grid_fits_the_layers(self) -> Params:
        widths, multiple = self.model.layer_widths(), self.search.width_multiple
        if multiple >= min(widths):
            raise ValueError(f"search.width_multiple={multiple} leaves no narrower width to search in a layer of "
                             f"{min(widths)} (the model's prunable widths are {list(widths)}): it must be below the "
                             "narrowest")
        return self

    @model_validator(mode="after")
    def _search_budget_is_reachable(self) -> Params:
        cfg = self.search
        least = self.model.macs_kept(self.model.lowest_keeps(cfg.min_keep, cfg.width_multiple))
        if cfg.macs_kept < least:
            raise ValueError(f"search.macs_kept={cfg.macs_kept} is below {least:.4f}, the share left with every "
                             f"layer at its narrowest (search.min_keep={cfg.min_keep}, at least {MIN_WIDTH} "
                             f"channels and {MIN_EMBEDDING} embedding units, widths in multiples of "
                             f"search.width_multiple={cfg.width_multiple})")
        return self


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    reason = error["msg"]
    # the offending value, unless it is a whole section (a cross-field check names its fields itself)
    if error["type"] not in {"missing", "extra_forbidden"} and not isinstance(error.get("input"), dict | None):
        reason += f" (got {error['input']!r})"
    return f"  {key}: {reason}"


def parse_params(raw: Any, *, source: str = "params") -> Params:
    """Validate a parsed params mapping; raise ParamsError naming every bad key and the reason."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(_describe(error) for error in exc.errors())
        raise ParamsError(f"{source}: {exc.error_count()} invalid param(s):\n{lines}") from None


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any], *, source: str = "params") -> Params:
    """Validate `raw` params with dotted-key overrides applied ({"pretrain.epochs": 3}); unknown keys are errors."""
    changed = copy.deepcopy(raw)
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        section = changed
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        if not isinstance(section, dict) or leaf not in section:
            raise ParamsError(f"{source}: override {key!r}: no such param key")
        section[leaf] = value
    return parse_params(changed, source=f"{source} with overrides {overrides}")


def read_raw_params(path: Path = DEFAULT_PARAMS_PATH) -> Any:
    """The params file parsed as YAML (an untrusted reader: size, nesting and aliases bounded), not yet validated;
    errors name the file."""
    try:
        return read_yaml(Path(path))
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    except ValueError as exc:  # too large, not UTF-8 text, nested too deeply, or aliases expanding too far
        raise ParamsError(f"{path}: not a params file ({exc})") from None


def load_params(path: Path = DEFAULT_PARAMS_PATH) -> Params:
    """Read and validate a params.yaml file."""
    return parse_params(read_raw_params(path), source=str(path))
