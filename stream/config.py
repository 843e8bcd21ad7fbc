"""Configuration: pydantic models loaded from YAML, overridden by environment variables.

Every key is documented in the README. Environment variables override the file: the name is
``STREAM__`` then the path in upper case joined by ``__`` (for example
``STREAM__KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:9092``); values for lists and mappings are JSON.

>>> config = Config.model_validate({"model": {"task": "regression",
...                                           "pipeline": ["linear_model.LinearRegression"]}})
>>> config.metrics.resolved_names("regression")
['MAE']
>>> config.drift.policy
'best'
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from connectors.base import ClientSettings, Connector
from stream.errors import ConfigError

Task = Literal["binary", "multiclass", "regression", "anomaly"]
PolicyName = Literal["none", "snapshot", "reset", "rollback", "best"]
Guarantee = Literal["exactly_once", "at_least_once"]

# A pipeline step: "preprocessing.StandardScaler" or {"linear_model.LogisticRegression": {"l2": 0.1}}
StepSpec = str | dict[str, dict[str, Any]]

DEFAULT_METRICS: dict[str, list[str]] = {
    "binary": ["Accuracy"],
    "multiclass": ["Accuracy"],
    "regression": ["MAE"],
    "anomaly": ["ROCAUC"],
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    task: Task = "binary"
    pipeline: list[StepSpec] = Field(
        default_factory=lambda: ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]
    )
    factory: str | None = Field(
        default=None, description="'module:function' returning a River estimator; replaces pipeline"
    )

    @model_validator(mode="after")
    def _pipeline_or_factory(self) -> ModelConfig:
        if self.factory is None and not self.pipeline:
            raise ValueError("give a non-empty 'pipeline' or a 'factory'")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"factory must look like 'module:function', got {self.factory!r}")
        return self


class MetricsConfig(_Section):
    names: list[str] = Field(default_factory=list, description="River metric classes; default per task")
    rolling_window: int = Field(default=1000, ge=1)
    history_every: int = Field(default=500, ge=1, description="record the rolling metric every N labels")

    def resolved_names(self, task: Task) -> list[str]:
        return self.names or DEFAULT_METRICS[task]


class DriftConfig(_Section):
    detector: StepSpec = "drift.ADWIN"
    policy: PolicyName = "best"
    candidates: int = Field(default=5, ge=0, description="how many recent snapshots compete")
    buffer_size: int = Field(default=200, ge=10, description="labelled events the candidates are scored on")
    challenger: bool = True


class S3Settings(_Section):
    """Where an ``s3://`` snapshot directory is served; credentials come from the standard AWS
    environment (``AWS_ACCESS_KEY_ID``, web identity, instance metadata, ``~/.aws`` with boto3)."""

    endpoint_url: str | None = Field(
        default=None,
        description="an S3-compatible server (MinIO, Ceph, R2, ...); default AWS_ENDPOINT_URL, else AWS",
    )
    region: str | None = Field(default=None, description="default: AWS_REGION, else us-east-1")


class SnapshotConfig(_Section):
    directory: str = Field(
        default="snapshots", description="a local folder, or s3://bucket/prefix (see snapshots.s3)"
    )
    s3: S3Settings = Field(default_factory=S3Settings)
    keep_last: int = Field(default=10, ge=1, description="per rotating reason (periodic, warning, ...)")
    keep_concepts: int = Field(
        default=20,
        ge=1,
        description="drift and manual snapshots kept per partition, each (the past concepts rollbacks "
        "return to; at least drift.candidates); pinned ones are always kept",
    )
    max_partition_bytes: int = Field(
        default=1 << 30,
        ge=0,
        description="byte budget of a partition's snapshots: the oldest unpinned go first, never its "
        "last two checkpoints; 0 = no budget",
    )
    every_events: int = Field(default=0, ge=0, description="periodic snapshot every N events; 0 = off")
    signing: bool = Field(
        default=True,
        description="sign snapshots and refuse unsigned or wrongly signed ones before unpickling; "
        "false: whoever can write the snapshot directory can run code in the service (logged)",
    )
    hmac_key: SecretStr | None = Field(default=None, description="the signing key; default: key_file's")
    key_file: Path | None = Field(
        default=None,
        description="file holding the signing key, generated on first use (mode 0600); default: "
        "<directory>.key beside the store. Instances sharing a snapshot directory share the key",
    )

    @field_validator("directory", mode="before")
    @classmethod
    def _path_as_text(cls, directory: object) -> object:
        return os.fspath(directory) if isinstance(directory, os.PathLike) else directory

    @property
    def in_s3(self) -> bool:
        return self.directory.startswith("s3://")

    @field_validator("hmac_key")
    @classmethod
    def _key_not_blank(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and not key.get_secret_value().strip():
            raise ValueError("must not be empty: leave it out to use the key in key_file")
        return key

    @model_validator(mode="after")
    def _one_key_outside_the_store(self) -> SnapshotConfig:
        if not self.signing and (self.hmac_key is not None or self.key_file is not None):
            raise ValueError("signing is false, so hmac_key and key_file would not be used")
        if self.hmac_key is not None and self.key_file is not None:
            raise ValueError("give hmac_key or key_file, not both")
        if self.in_s3:
            if self.signing and self.hmac_key is None and self.key_file is None:
                raise ValueError(
                    "hmac_key: snapshots in S3 are restored by instances on other machines, which must "
                    "sign with the same key: set hmac_key (or key_file), or signing: false"
                )
            return self
        directory, key_file = (
            Path(os.path.abspath(path)) for path in (self.directory, self.resolved_key_file())
        )
        if key_file.is_relative_to(directory):
            raise ValueError(
                f"key_file {self.key_file} is inside directory {self.directory}: whoever can write "
                "snapshots could replace the key"
            )
        return self

    def resolved_key_file(self) -> Path:
        """Where the signing key is kept: ``key_file``, or ``<directory>.key`` beside the store."""
        if self.key_file is not None:
            return self.key_file
        directory = Path(os.path.abspath(self.directory))
        return directory.with_name(f"{directory.name}.key")


class KafkaConfig(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    input_topic: str = "events"
    predictions_topic: str = "predictions"
    dead_letter_topic: str = "events.dead-letter"
    group_id: str = "stream"
    label_topic: str | None = Field(
        default=None,
        description="delayed labels: a topic of {id, y, ts} messages, keyed and partitioned like "
        "the input topic; events without y wait for their label there (see labels.*)",
    )
    backend: Literal["auto", "confluent-kafka", "kafka-python"] = Field(
        default="auto",
        description="Kafka client library: confluent-kafka (librdkafka, several times faster; "
        "installed with the package), kafka-python (pure Python), or auto: confluent-kafka when "
        "it is installed, else kafka-python. Client options require a named library",
    )
    client_options: dict[str, Any] = Field(
        default_factory=dict,
        description="passed as-is to every client of the backend (kafka-python: security_protocol, "
        "sasl_*, ssl_*; confluent-kafka: security.protocol, sasl.*, ssl.*)",
    )
    consumer_options: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to consumers only (kafka-python: max_poll_interval_ms, ...; "
        "confluent-kafka: max.poll.interval.ms, ...)",
    )
    producer_options: dict[str, Any] = Field(
        default_factory=dict, description="passed to producers only (linger_ms / linger.ms, ...)"
    )
    request_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="how long any blocking client call may take (commits, offset lookups, sends) "
        "before the service gives up on its clients and recovers from its last commit",
    )
    transaction_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="exactly_once: how soon the broker aborts the open transaction of an instance "
        "that died, which until then holds back every read_committed reader of the output topics",
    )

    @model_validator(mode="after")
    def _options_name_their_library(self) -> KafkaConfig:
        options = {"client_options": self.client_options, "consumer_options": self.consumer_options,
                   "producer_options": self.producer_options}  # fmt: skip
        given = [name for name, value in options.items() if value]
        if self.backend == "auto" and given:
            raise ValueError(
                f"backend: auto with {', '.join(given)}: options are spelled per client library "
                "(kafka-python: security_protocol, linger_ms; confluent-kafka: security.protocol, "
                "linger.ms); set backend to the library they are written for"
            )
        return self

    @property
    def library(self) -> str:
        """The client library in use: :attr:`backend`, with ``auto`` resolved."""
        from connectors import resolve_backend

        return resolve_backend(self.backend)

    @property
    def examples_topic(self) -> str:
        """Delayed labels: every example learned, in order (:mod:`stream.changelog`)."""
        return f"{self.group_id}.{self.input_topic}.examples"

    @property
    def join_topic(self) -> str:
        """Delayed labels: the join's changes, compacted (:mod:`stream.changelog`)."""
        return f"{self.group_id}.{self.input_topic}.join"

    @property
    def output_topics(self) -> list[str]:
        return [self.predictions_topic, self.dead_letter_topic]

    def connector(self) -> Connector:
        """The connector of the configured backend, with these options and time bounds."""
        from connectors import create_connector

        settings = ClientSettings(
            common=self.client_options,
            consumer=self.consumer_options,
            producer=self.producer_options,
            request_timeout=self.request_timeout_seconds,
            transaction_timeout=self.transaction_timeout_seconds,
        )
        return create_connector(self.library, self.bootstrap_servers, settings)


class ServiceConfig(_Section):
    guarantee: Guarantee = "exactly_once"
    instance_id: str | None = Field(
        default=None,
        description="stable per instance (static group membership, transactional id); default: the "
        "host name, then <host>-2, <host>-3... for further processes on the same host",
    )
    commit_every_seconds: float = Field(
        default=0.2,
        gt=0,
        description="how often predictions and offsets are committed (exactly_once: how soon a "
        "read_committed reader sees a prediction)",
    )
    checkpoint_every_events: int = Field(
        default=10_000, ge=1, description="snapshot the model after this many events (bounds re-learning)"
    )
    checkpoint_every_seconds: float = Field(
        default=30.0, gt=0, description="or after this long, if it learned anything"
    )
    status_every_seconds: float = Field(default=10.0, gt=0)
    max_event_bytes: int = Field(default=1_000_000, ge=1)
    stall_seconds: float = Field(
        default=120.0, gt=0, description="/health answers 503 once the service loop has stalled this long"
    )
    unhealthy_after_failures: int = Field(
        default=3,
        ge=1,
        description="/health answers 503 after this many recoveries in a row without progress",
    )


class ApiConfig(_Section):
    # A Host header value: '*', or a name, IPv4 address or bracketed IPv6 address, and a port or not.
    HOST_HEADER: ClassVar[re.Pattern[str]] = re.compile(
        r"\*|(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
    )

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535, description="0 picks a free port")
    token: SecretStr | None = Field(default=None, description="bearer token for state-changing calls")
    allowed_hosts: list[str] | None = Field(
        default=None,
        description="Host header values answered ('name' or 'name:port'; a name without a port also "
        "matches with the API's port; '*': any); default: api.host, localhost, 127.0.0.1 with the "
        "API's port. Others get 421 (DNS rebinding)",
    )
    max_body_bytes: int = Field(default=1_000_000, ge=1)
    max_events_per_request: int = Field(default=1000, ge=1)
    max_concurrent_predicts: int = Field(
        default=1,
        ge=1,
        description="snapshot predictions running at once; more get 503 with Retry-After (they "
        "share the interpreter with the stream)",
    )

    @field_validator("token")
    @classmethod
    def _token_can_be_sent(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None:
            return None
        value = token.get_secret_value()
        if not value.strip():
            raise ValueError("must not be empty: leave it out to disable state-changing calls")
        if value != value.strip() or not (value.isascii() and value.isprintable()):
            raise ValueError(
                "must be printable ASCII without leading or trailing spaces (an HTTP header carries it)"
            )
        return token

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_are_host_headers(cls, hosts: list[str] | None) -> list[str] | None:
        if hosts is None:
            return None
        for host in hosts:
            if not cls.HOST_HEADER.fullmatch(host):
                raise ValueError(f"{host!r} is not a Host header value: give 'name' or 'name:port', or '*'")
        return [host.lower() for host in hosts]


class LimitsConfig(_Section):
    """Bounds on what one event can make a model hold or a prediction carry; beyond them, the
    event is a dead letter with the reason."""

    max_features: int = Field(default=1000, ge=1, description="features per event")
    max_label_chars: int = Field(default=1000, ge=1, description="characters of a string label")
    max_proba_classes: int = Field(
        default=20, ge=1, description="classes in a prediction's y_proba: the most probable ones"
    )


class LabelsConfig(_Section):
    """Delayed labels (``kafka.label_topic``, or ``stream replay --labels``): how long and how many
    events wait for their label, and labels for their event."""

    max_wait_seconds: float | None = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="an event waits this long for its label, then expires unlearned (and a label "
        "this long for its event, then is a dead letter); null: no time limit",
    )
    max_wait_events: int | None = Field(
        default=None, ge=1, description="or until this many later events arrived; null: no limit"
    )
    max_pending: int = Field(
        default=1_000_000, ge=1, description="events waiting at most; beyond, the oldest expires (evicted)"
    )
    order_wait_seconds: float = Field(
        default=0.5,
        ge=0,
        description="records of a partition's events and labels are taken in produce-time order: "
        "one waits this long at most for the other topic to show a record to compare it with",
    )
    max_held: int = Field(
        default=100_000,
        ge=1,
        description="labels waiting for their event at most; beyond, the oldest is a dead letter",
    )


class Config(BaseSettings):
    """The whole configuration; every section has defaults, so ``{}`` is a valid config."""

    model_config = SettingsConfigDict(
        env_prefix="STREAM__", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    model: ModelConfig = Field(default_factory=ModelConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)

    @model_validator(mode="after")
    def _candidates_outlive_retention(self) -> Config:
        if self.snapshots.keep_concepts < self.drift.candidates:
            raise ValueError(
                f"snapshots.keep_concepts ({self.snapshots.keep_concepts}) is below drift.candidates "
                f"({self.drift.candidates}): retention would delete snapshots the policy still compares"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides what the YAML file (passed as init values) says.
        return env_settings, init_settings


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML file (or nothing: all defaults), apply ``STREAM__*`` variables and overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, not {type(loaded).__name__}")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        section = data
        *parents, leaf = dotted.split(".")
        for name in parents:
            section = section.setdefault(name, {})
        section[leaf] = value
    try:
        return Config(**data)
    except SettingsError as error:
        raise ConfigError(f"invalid configuration (environment): {_unparsable_variable(error)}") from None
    except ValidationError as error:
        problems = "\n".join(
            f"  {'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()
        )
        raise ConfigError(f"invalid configuration ({source}):\n{problems}") from None


ENV_PREFIX = "STREAM__"


def _takes_json(key: str) -> bool:
    """Whether the dotted config ``key`` is a section, a list or a mapping, which a variable must
    give as JSON (pydantic-settings reads a union such as ``drift.detector`` as text if it is not)."""
    section, _, leaf = key.partition(".")
    field = Config.model_fields.get(section)
    if field is None or not leaf:
        return field is not None
    inner = field.annotation.model_fields.get(leaf) if field.annotation else None
    return inner is not None and get_origin(inner.annotation) in (list, dict)


def _unparsable_variable(error: SettingsError) -> str:
    """Name the ``STREAM__`` variable whose value should be JSON and is not (pydantic-settings
    names only its section), with the key it sets and why it does not parse."""
    for name, value in sorted(os.environ.items()):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        if not _takes_json(key):
            continue
        try:
            json.loads(value)
        except ValueError as parse_error:
            return f"{name} sets {key}, which takes JSON (a list or mapping): {parse_error}"
    return f"{error}: {error.__cause__!r}"


def check_snapshot_directory(directory: Path) -> None:
    """Refuse a ``snapshots.directory`` that is not a directory and cannot be created as one.

    >>> check_snapshot_directory(Path(__file__) / "snapshots")
    Traceback (most recent call last):
    ...
    stream.errors.ConfigError: snapshots.directory: cannot create .../snapshots: ... is not a directory
    """
    try:
        existing = next(p for p in (directory, *directory.parents) if p.exists() or p.is_symlink())
    except OSError as error:  # say, a parent that may not be read
        raise ConfigError(f"snapshots.directory: cannot look at {directory}: {error}") from None
    if not existing.is_dir():
        cannot_create = "" if existing == directory else f"cannot create {directory}: "
        raise ConfigError(f"snapshots.directory: {cannot_create}{existing} is not a directory")
    if existing != directory and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"snapshots.directory: cannot create {directory}: {existing} is not writable")
