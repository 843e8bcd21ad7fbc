from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from stream.config import Config, check_snapshot_directory, load_config
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


def test_every_problem_is_listed_on_its_own_line_under_the_source(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("drift:\n  policy: sometimes\n  candidates: -1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    first, *problems = str(error.value).split("\n")
    assert first == f"invalid configuration ({path}):"
    assert [p.split(":")[0] for p in problems] == ["  drift.policy", "  drift.candidates"]
    with pytest.raises(ConfigError, match=r"^invalid configuration \(defaults\):\n  drift.policy: "):
        load_config(overrides={"drift.policy": "sometimes"})


def test_a_file_must_hold_sections_and_an_empty_one_means_defaults(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("- model\n- drift\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections, not list"):
        load_config(path)
    path.write_text("# nothing set\n")
    assert load_config(path) == load_config()


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


# -- every key: unknown ones are named, every known one can be set from the environment -----------

SECTIONS = {name: field.annotation for name, field in Config.model_fields.items()}


def _scalar_leaves() -> list[tuple[str, str, Any]]:
    """(section, key, a valid value other than the default) for every scalar key."""
    leaves: list[tuple[str, str, Any]] = []
    for section, model in SECTIONS.items():
        for key, field in model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            annotation = field.annotation
            arms = set(get_args(annotation)) - {type(None)}
            if len(arms) == 1 and arms <= {int, float} and get_args(annotation):  # an optional number
                annotation, default = arms.pop(), default or 0
            if get_origin(annotation) is Literal:
                value = next(choice for choice in get_args(annotation) if choice != default)
            elif annotation is bool:
                value = not default
            elif annotation in (int, float):
                value = annotation(default) + 3
            elif annotation in (str, Path) or (
                default is None and list not in {get_origin(arm) for arm in get_args(annotation)}
            ):
                value = f"from_env:{key}"  # a factory must look like module:function
            else:
                continue  # lists, mappings and pipeline steps: JSON values, tested above by example
            leaves.append((section, key, value))
    return leaves


SCALAR_LEAVES = _scalar_leaves()


def test_every_key_but_the_structured_ones_is_covered():
    every_key = {(section, key) for section, model in SECTIONS.items() for key in model.model_fields}
    structured = {
        ("model", "pipeline"),
        ("metrics", "names"),
        ("drift", "detector"),
        ("kafka", "client_options"),
        ("kafka", "consumer_options"),
        ("kafka", "producer_options"),
        ("api", "allowed_hosts"),
        ("snapshots", "s3"),  # a section of its own: test_the_s3_settings_come_from_the_environment_too
    }
    assert every_key - {(section, key) for section, key, _ in SCALAR_LEAVES} == structured


@pytest.mark.parametrize(
    ("section", "key", "value"), SCALAR_LEAVES, ids=[f"{s}.{k}" for s, k, _ in SCALAR_LEAVES]
)
def test_every_scalar_key_can_be_set_from_the_environment(section, key, value, monkeypatch):
    text = str(value).lower() if isinstance(value, bool) else str(value)
    monkeypatch.setenv(f"STREAM__{section}__{key}".upper(), text)
    config = load_config()
    got = getattr(getattr(config, section), key)
    got = got.get_secret_value() if isinstance(got, SecretStr) else got
    assert got == (Path(value) if isinstance(got, Path) else value)


names = st.text(st.characters(categories=["L", "N"], include_characters="_-."), min_size=1, max_size=20)


@settings(deadline=None)
@given(section=st.sampled_from(sorted(SECTIONS)), key=names, value=st.integers() | st.text(max_size=5))
def test_any_unknown_key_is_named_in_the_error(section, key, value):
    assume(key.lower() not in SECTIONS[section].model_fields and "." not in key)
    with pytest.raises(ConfigError, match=rf"\n  {re.escape(section)}\.{re.escape(key)}: Extra inputs"):
        load_config(overrides={f"{section}.{key}": value})


@settings(deadline=None)
@given(section=names)
def test_any_unknown_section_is_named_in_the_error(section):
    assume(section.lower() not in SECTIONS and "." not in section)
    with pytest.raises(ConfigError, match=rf"\n  {re.escape(section)}: Extra inputs"):
        load_config(overrides={f"{section}.key": 1})


# -- environment variables that must be JSON, and the snapshot directory --------------------------


@pytest.mark.parametrize(
    ("variable", "key"),
    [
        ("STREAM__MODEL__PIPELINE", "model.pipeline"),
        ("STREAM__METRICS__NAMES", "metrics.names"),
        ("STREAM__KAFKA__CLIENT_OPTIONS", "kafka.client_options"),
        ("STREAM__KAFKA__PRODUCER_OPTIONS", "kafka.producer_options"),
        ("stream__kafka__consumer_options", "kafka.consumer_options"),
        ("STREAM__DRIFT", "drift"),
    ],
)
def test_a_list_or_mapping_from_the_environment_must_be_json_and_the_error_names_it(
    variable, key, monkeypatch
):
    monkeypatch.setenv("STREAM__DRIFT__DETECTOR", "drift.ADWIN")  # text, not JSON, and rightly so
    monkeypatch.setenv(variable, "[oops, not: json}")
    with pytest.raises(ConfigError) as error:
        load_config()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"invalid configuration (environment): {variable} sets {key}, which takes JSON (a list or mapping): "
    ), message


def test_a_section_from_the_environment_that_does_not_parse_is_named_with_the_reason(monkeypatch):
    monkeypatch.setenv("STREAM__SNAPSHOTS__S3", "[oops")
    with pytest.raises(ConfigError) as error:
        load_config()
    assert str(error.value).startswith(
        'invalid configuration (environment): error parsing value for field "snapshots" from source '
        '"EnvSettingsSource": JSONDecodeError('
    ), str(error.value)


def test_the_snapshot_directory_must_be_a_directory_or_creatable_as_one(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    check_snapshot_directory(tmp_path)
    check_snapshot_directory(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()
    with pytest.raises(
        ConfigError, match=rf"^snapshots\.directory: {re.escape(str(a_file))} is not a directory$"
    ):
        check_snapshot_directory(a_file)
    with pytest.raises(
        ConfigError, match=r"^snapshots\.directory: cannot create .*/a-file/x: .*/a-file is not a"
    ):
        check_snapshot_directory(a_file / "x")


def test_a_snapshot_directory_under_one_that_may_not_be_written_is_refused(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access

    def access(path, mode):  # what a user who may not write ``locked`` is told (root may write anywhere)
        return not (Path(path) == locked and mode & os.W_OK) and real_access(path, mode)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(ConfigError) as refused:
        check_snapshot_directory(locked / "new")
    assert (
        str(refused.value) == f"snapshots.directory: cannot create {locked / 'new'}: {locked} is not writable"
    )
    check_snapshot_directory(tmp_path / "free" / "new")


def test_a_snapshot_directory_that_cannot_be_looked_at_is_refused_with_the_reason(tmp_path):
    directory = tmp_path / ("n" * 300) / "snapshots"
    with pytest.raises(ConfigError) as refused:
        check_snapshot_directory(directory)
    assert str(refused.value).startswith(
        f"snapshots.directory: cannot look at {directory}: [Errno 36] File name too long"
    )


def test_the_s3_settings_come_from_the_environment_too(monkeypatch):
    monkeypatch.setenv("STREAM__SNAPSHOTS__DIRECTORY", "s3://bucket/stream")
    monkeypatch.setenv("STREAM__SNAPSHOTS__S3__ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("STREAM__SNAPSHOTS__S3__REGION", "eu-west-1")
    monkeypatch.setenv("STREAM__SNAPSHOTS__HMAC_KEY", "shared")
    snapshots = load_config().snapshots
    assert (snapshots.directory, snapshots.in_s3) == ("s3://bucket/stream", True)
    assert (snapshots.s3.endpoint_url, snapshots.s3.region) == ("http://minio:9000", "eu-west-1")


def test_snapshots_in_s3_need_the_shared_key_named():
    with pytest.raises(ConfigError, match=r"snapshots: .*hmac_key: snapshots in S3 .* same key"):
        load_config(overrides={"snapshots.directory": "s3://bucket/stream"})
    assert not load_config(
        overrides={"snapshots.directory": "s3://b/p", "snapshots.signing": False}
    ).snapshots.signing


def test_retention_may_not_delete_the_candidates_the_policy_compares():
    with pytest.raises(ConfigError, match=r"snapshots.keep_concepts \(3\) is below drift.candidates \(5\)"):
        load_config(overrides={"snapshots.keep_concepts": 3})


def test_the_default_client_is_confluent_kafka_when_installed_and_kafka_python_otherwise(monkeypatch):
    from connectors.confluent import ConfluentConnector
    from connectors.kafka import KafkaPythonConnector

    config = load_config()
    assert (config.kafka.backend, config.kafka.library) == ("auto", "confluent-kafka")
    assert type(config.kafka.connector()) is ConfluentConnector
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "confluent_kafka" else real_find_spec(name, *a),
    )
    assert config.kafka.library == "kafka-python"
    assert type(config.kafka.connector()) is KafkaPythonConnector
    named = load_config(overrides={"kafka.backend": "confluent-kafka"})
    assert named.kafka.library == "confluent-kafka"  # a named library is never swapped


@pytest.mark.parametrize("key", ["client_options", "consumer_options", "producer_options"])
def test_client_options_need_the_library_they_are_spelled_for_named(key):
    with pytest.raises(ConfigError, match=rf"\n  kafka: .*backend: auto with {key}: options are spelled per"):
        load_config(overrides={f"kafka.{key}": {"linger_ms": 5}})
    options = load_config(overrides={"kafka.backend": "kafka-python", f"kafka.{key}": {"linger_ms": 5}})
    assert getattr(options.kafka, key) == {"linger_ms": 5}


def test_the_connector_gets_the_configured_servers_options_and_time_bounds():
    from connectors.base import ClientSettings

    kafka = load_config(
        overrides={
            "kafka.backend": "kafka-python",
            "kafka.bootstrap_servers": "broker-1:9093,broker-2:9093",
            "kafka.client_options": {"security_protocol": "SSL"},
            "kafka.consumer_options": {"fetch_min_bytes": 2},
            "kafka.producer_options": {"linger_ms": 7},
            "kafka.request_timeout_seconds": 4.5,
            "kafka.transaction_timeout_seconds": 30.0,
        }
    ).kafka
    connector = kafka.connector()
    assert connector.bootstrap_servers == "broker-1:9093,broker-2:9093"
    assert connector.settings == ClientSettings(
        common={"security_protocol": "SSL"},
        consumer={"fetch_min_bytes": 2},
        producer={"linger_ms": 7},
        request_timeout=4.5,
        transaction_timeout=30.0,
    )
