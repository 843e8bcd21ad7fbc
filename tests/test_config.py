from __future__ import annotations

import pytest

from stream.config import load_config
from stream.errors import ConfigError


def test_missing_file_gives_all_defaults():
    config = load_config()
    assert config.model.task == "binary"
    assert config.drift.policy == "best"
    assert config.service.guarantee == "exactly_once"


def test_yaml_values_are_loaded(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  task: regression\n  pipeline: [linear_model.LinearRegression]\n")
    config = load_config(path)
    assert config.model.task == "regression"
    assert config.metrics.resolved_names("regression") == ["MAE"]


def test_environment_variables_override_the_file(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("kafka:\n  bootstrap_servers: from-file:9092\n  group_id: g\n")
    monkeypatch.setenv("STREAM__KAFKA__BOOTSTRAP_SERVERS", "from-env:9092")
    monkeypatch.setenv("STREAM__DRIFT__CANDIDATES", "7")
    config = load_config(path)
    assert config.kafka.bootstrap_servers == "from-env:9092"
    assert config.kafka.group_id == "g"  # the rest of the section survives the override
    assert config.drift.candidates == 7


def test_an_unknown_key_is_named_in_the_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("kafka:\n  bootstrap_server: typo:9092\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_server: Extra inputs are not permitted"):
        load_config(path)


def test_a_bad_value_is_named_in_the_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("drift:\n  policy: sometimes\n")
    with pytest.raises(ConfigError, match=r"drift\.policy"):
        load_config(path)


def test_invalid_yaml_and_missing_file_are_reported(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_factory_must_name_module_and_function():
    with pytest.raises(ConfigError, match="module:function"):
        load_config(overrides={"model.factory": "just_a_module"})
