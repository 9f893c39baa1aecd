"""params.yaml validation: every bad key is named with its reason, before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from groundwork.params import ParamsError, load_params, parse_params
from groundwork.project import ROOT, project_params_dict, tiny_params_dict
from groundwork.schema import SCHEMA_FILE, schema_text


def test_project_params_file_is_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.ingest.labels_per_class == 10


def test_property_tests_draw_from_a_fixed_seed_unless_fuzzing() -> None:
    # CI must run the same cases every time; `make fuzz` (GROUNDWORK_FUZZ_CASES) asks for new ones
    assert settings.default.derandomize is ("GROUNDWORK_FUZZ_CASES" not in os.environ)


@pytest.mark.parametrize(
    ("changes", "key", "reason"),
    [
        ({"pretrain": {"lrate": 0.1}}, "pretrain.lrate", "Extra inputs are not permitted"),
        ({"pretrain": {"epochs": "many"}}, "pretrain.epochs", "valid integer"),
        ({"pretrain": {"epochs": -1}}, "pretrain.epochs", "greater than or equal to 1"),
        ({"transfer": {"lr": 0}}, "transfer.lr", "greater than 0"),
        ({"pretrain": {"optimizer": "rmsprop"}}, "pretrain.optimizer", "'sgd', 'momentum', 'adam' or 'adamw'"),
        ({"transfer": {"schedule": "linear"}}, "transfer.schedule", "'step', 'onecycle' or 'plateau'"),
        ({"ingest": {"source_val_fraction": 1.5}}, "ingest.source_val_fraction", "less than 1"),
        ({"ingest": {"source": {"dataset": "cifar100"}}}, "ingest.source.dataset", "'svhn' or 'image_folder'"),
        ({"ingest": {"target": {"dataset": "image_folder", "download": True}}}, "ingest.target",
         "download: true applies to torchvision datasets only, not to 'image_folder'"),
        ({"ingest": {"target": {"emnist_split": "letters"}}}, "ingest.target.emnist_split", "'digits' or 'mnist'"),
        ({"ingest": {"source": {"size": 32}}}, "ingest.source.size", "less than or equal to 28"),
        ({"augment": {"scale": {"range": [1.2, 0.8]}}}, "augment.scale", "low <= high"),
        ({"pretrain": {"warmup_epochs": 9, "epochs": 5}}, "pretrain", "warmup_epochs (9) must be below epochs"),
        ({"transfer": {"mode": "distill"}}, "transfer.mode", "'linear_probe', 'finetune' or 'discriminative'"),
        ({"pretrain": {"objective": "mae"}}, "pretrain.objective", "'supervised' or 'contrastive'"),
        ({"budget": {"labels_per_class": [5, 0]}}, "budget.labels_per_class.1", "greater than or equal to 1"),
        ({"device": "tpu"}, "device", "'auto', 'cpu' or 'cuda'"),
        ({"compress": {"finetune": {"batch_size": 0}}}, "compress.finetune.batch_size", "greater than or equal"),
        ({"evaluation": {}}, "evaluation", "Extra inputs are not permitted"),
        ({"model": {"arch": "resnet"}}, "model.arch", "'cnn', 'mlp' or 'lenet5'"),
        ({"model": {"arch": "mlp", "hidden": []}}, "model.hidden", "at least 1 item"),
        ({"model": {"arch": "mlp", "hidden": [256, 0]}}, "model.hidden.1", "greater than or equal to 1"),
        ({"model": {"arch": "lenet5", "channels": [20, 50, 64]}}, "model",
         "channels [20, 50, 64]: 3 5x5 convs with 2x2 pools do not fit 28x28 images"),
        ({"model": {"arch": "lenet5", "inner_channels": [8, 16]}}, "model", "needs arch cnn"),
        ({"evaluate": {"selection": {"max_loss_points": -0.5}}}, "evaluate.selection.max_loss_points",
         "greater than or equal to 0"),
        ({"evaluate": {"selection": {"objective": "accuracy"}}}, "evaluate.selection.objective",
         "'throughput', 'latency' or 'size'"),
        ({"evaluate": {"selection": {"variant": "packed"}}}, "evaluate.selection.variant", "'searched_int8'"),
        ({"evaluate": {"candidate": "int8"}}, "evaluate.candidate", "Extra inputs are not permitted"),
        ({"compress": {"quantization": {"method": "kl"}}}, "compress.quantization.method",
         "'minmax', 'entropy' or 'percentile'"),
    ],
)
def test_bad_param_names_key_and_reason(changes: dict, key: str, reason: str) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_params(tiny_params_dict(**changes), source="params.yaml")
    message = str(caught.value)
    assert f"  {key}:" in message
    assert reason in message
    assert message.startswith("params.yaml:")


def test_missing_key_is_named() -> None:
    raw = project_params_dict()
    del raw["transfer"]["epochs"]
    with pytest.raises(ParamsError, match=r"transfer\.epochs: Field required"):
        parse_params(raw)


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(ParamsError, match="2 invalid param") as caught:
        parse_params(tiny_params_dict(seed=-3, pretrain={"batch_size": 0}))
    assert "seed:" in str(caught.value)
    assert "pretrain.batch_size:" in str(caught.value)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"missing\.yaml: params file not found"):
        load_params(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("pretrain: [unclosed\n")
    with pytest.raises(ParamsError, match=r"broken\.yaml: not valid YAML"):
        load_params(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(listed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    section=st.sampled_from(["pretrain", "transfer", "augment", "ingest", "model", "compress", "evaluate"]),
    value=st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
                    st.lists(st.integers(), max_size=3)),
    data=st.data(),
)
def test_fuzzed_values_either_validate_or_name_the_key(section: str, value: object, data: st.DataObject) -> None:
    raw = project_params_dict()
    key = data.draw(st.sampled_from(sorted(raw[section])))
    raw[section][key] = value
    try:
        parse_params(raw)
    except ParamsError as exc:
        assert f"{section}.{key}" in str(exc) or f"  {section}:" in str(exc)


@pytest.mark.subprocess
def test_stage_entry_point_rejects_bad_params_before_any_work(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict(ingest={"labels_per_class": 0})))
    result = subprocess.run(
        [sys.executable, "-m", "tasks.ingest", "--params", str(params), "--source-out", "s.npz",
         "--target-out", "t.npz", "--metrics", "ingest.json"],
        cwd=tmp_path, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2
    assert "ingest.labels_per_class: Input should be greater than or equal to 1 (got 0)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no data, metrics or mlflow.db


def test_the_schema_file_is_what_the_params_models_give() -> None:
    assert (ROOT / SCHEMA_FILE).read_text() == schema_text(), "the models changed: run `python -m groundwork.schema`"


def test_params_yaml_names_its_schema_and_meets_it() -> None:
    text = (ROOT / "params.yaml").read_text()
    assert text.splitlines()[0] == f"# yaml-language-server: $schema={SCHEMA_FILE}"
    schema = json.loads((ROOT / SCHEMA_FILE).read_text())
    Draft202012Validator.check_schema(schema)
    Draft202012Validator(schema).validate(yaml.safe_load(text))
    Draft202012Validator(schema).validate(tiny_params_dict())


@pytest.mark.parametrize(("changes", "path"), [
    ({"pretrain": {"optimizer": "rmsprop"}}, ["pretrain", "optimizer"]),
    ({"pretrain": {"epochs": 0}}, ["pretrain", "epochs"]),
    ({"pretrain": {"lrate": 0.1}}, ["pretrain"]),
    ({"model": {"channels": []}}, ["model", "channels"]),
    ({"ingest": {"source": {"dataset": "cifar100"}}}, ["ingest", "source", "dataset"]),
])
def test_the_schema_flags_what_the_models_refuse(changes: dict[str, Any], path: list[str]) -> None:
    """What an editor underlines is what the stages would refuse, at the same key."""
    raw = tiny_params_dict(**changes)
    with pytest.raises(ParamsError):
        parse_params(raw)
    schema = json.loads((ROOT / SCHEMA_FILE).read_text())
    assert [list(error.absolute_path) for error in Draft202012Validator(schema).iter_errors(raw)] == [path]


def test_the_project_gives_prefect_s_temporary_server_time_to_start() -> None:
    # prefect.toml is read from the folder a flow starts in: a fresh clone's first start migrates Prefect's database
    read = subprocess.run([sys.executable, "-c", "from prefect.settings import get_current_settings as s; "
                           "print(s().server.ephemeral.startup_timeout_seconds)"], cwd=ROOT, capture_output=True,
                          text=True, check=True,
                          env={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")})
    assert int(read.stdout) == 120
