"""Shared fixtures. Kafka tests always run against a real Apache Kafka broker.

The broker is, in order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; a testcontainers Kafka when a
Docker engine answers; otherwise the project's local KRaft broker (jars from Maven Central).
If none can be had the run fails with instructions; it never skips silently.

S3 tests likewise use a real S3 server (``s3``, ``s3_bucket``): ``S3_ENDPOINT_URL`` (with
``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``) if set; MinIO in testcontainers when a Docker
engine answers and the ``minio`` client is installed; otherwise the project's local S3Proxy.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from kafka.admin import KafkaAdminClient, NewTopic

import stream.snapshots
import stream.storage
from kafka_local import BrokerError, LocalBroker
from s3_local import LocalS3, S3Error, create_bucket

# Property tests try 500 examples each; a mutation run (`make mutate`) runs every survivor's
# tests again, and 50 examples there keep it inside the hour.
settings.register_profile("default", max_examples=500)
settings.register_profile("mutation", max_examples=50)

HOW_TO_GET_A_BROKER = (
    "No Kafka broker could be started for the tests. Either run `make setup` (fetches the "
    "local broker's jars from Maven Central; needs Java 17+ and Maven), start Docker, or set "
    "KAFKA_BOOTSTRAP_SERVERS to a broker you run."
)


def _docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


class _Broker:
    """What a test sees: an address, and (for the local broker) a way to stop and restart it."""

    def __init__(self, bootstrap_servers: str, local: LocalBroker | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.local = local


@pytest.fixture(scope="session")
def kafka() -> Iterator[_Broker]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield _Broker(os.environ["KAFKA_BOOTSTRAP_SERVERS"])
        return
    if _docker_engine_answers():
        from testcontainers.community.kafka import KafkaContainer

        container = (
            KafkaContainer("confluentinc/cp-kafka:7.6.0")
            .with_kraft()
            .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        )
        with container:
            yield _Broker(container.get_bootstrap_server())
        return
    broker = LocalBroker()
    try:
        broker.start()
    except BrokerError as error:
        broker.close()
        pytest.fail(f"{HOW_TO_GET_A_BROKER}\n{error}", pytrace=False)
    try:
        yield _Broker(broker.bootstrap_servers, broker)
    finally:
        broker.close()


@pytest.fixture
def new_topic(kafka: _Broker, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Create a topic with a unique name for this test: ``new_topic(partitions=3)``."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    request.addfinalizer(admin.close)

    def create(partitions: int = 1, prefix: str | None = None) -> str:
        name = f"{prefix or request.node.name[:40]}-{uuid.uuid4().hex[:8]}"
        name = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        return name

    return create


HOW_TO_GET_S3 = (
    "No S3 server could be started for the tests. Either run `make setup` (fetches S3Proxy from "
    "Maven Central; needs Java 17+ and Maven), start Docker (MinIO; needs the `minio` package), or "
    "set S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to an S3 server you run."
)


class _S3:
    """What a test sees of the S3 server: where it is, its credentials, and a way to add buckets.

    ``local`` is the ``LocalS3`` when the tests started one (its ``basedir`` holds the buckets).
    """

    def __init__(
        self,
        endpoint_url: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        make_bucket: Callable[[str], object] | None = None,
        local: LocalS3 | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self._make_bucket = make_bucket
        self.local = local

    def create_bucket(self, name: str) -> None:
        if self._make_bucket is not None:
            self._make_bucket(name)
            return
        create_bucket(
            self.endpoint_url,
            name,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
        )


@pytest.fixture(scope="session")
def s3() -> Iterator[_S3]:
    if os.environ.get("S3_ENDPOINT_URL"):
        missing = [key for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not os.environ.get(key)]
        if missing:
            pytest.fail(f"S3_ENDPOINT_URL is set but not {' and '.join(missing)}", pytrace=False)
        yield _S3(
            os.environ["S3_ENDPOINT_URL"],
            os.environ["AWS_ACCESS_KEY_ID"],
            os.environ["AWS_SECRET_ACCESS_KEY"],
            os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        )
        return
    # testcontainers' MinIO module imports the `minio` client (a dev dependency).
    if importlib.util.find_spec("minio") is not None and _docker_engine_answers():
        from testcontainers.community.minio import MinioContainer

        with MinioContainer() as minio:
            config = minio.get_config()
            yield _S3(
                f"http://{config['endpoint']}",
                config["access_key"],
                config["secret_key"],
                make_bucket=minio.get_client().make_bucket,
            )
        return
    server = LocalS3()
    try:
        server.start()
    except S3Error as error:
        server.close()
        pytest.fail(f"{HOW_TO_GET_S3}\n{error}", pytrace=False)
    try:
        yield _S3(server.endpoint_url, server.access_key, server.secret_key, server.region, local=server)
    finally:
        server.close()


@pytest.fixture
def s3_bucket(s3: _S3) -> str:
    """A new bucket on the session's S3 server for this test alone; its name (``test-<8 hex>``)."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(name)
    return name


@pytest.fixture
def file_steps(monkeypatch):
    """Snapshot file operations report to the crash plan of the broker under test, once there is one."""
    kafkas: list = []  # the FakeKafka under test
    write, rename = stream.storage._write_durably, os.rename

    def reported_write(path, data):
        if kafkas:
            kafkas[0].plan.reached("snapshot.write")
        write(path, data)

    def reported_rename(source, target):
        if kafkas:
            kafkas[0].plan.reached("snapshot.rename")
        rename(source, target)

    monkeypatch.setattr(stream.storage, "_write_durably", reported_write)
    monkeypatch.setattr(stream.storage.os, "rename", reported_rename)
    return kafkas


# What ``--mutation`` (``make mutate``) runs of a test parametrized over drift detectors: the
# engine's code is the same for each (the detectors are River's), and each survivor runs every
# test that reaches its code, so the other detectors would only multiply the run's hours.
MUTATION_DETECTOR = "drift.ADWIN"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--mutation",
        action="store_true",
        help="the selection of `make mutate`: tests parametrized over drift detectors run with "
        f"{MUTATION_DETECTOR} alone, and the smoke tests of benchmark scripts (marked benchmark) not at all",
    )


@functools.cache
def _durations_mutmut_recorded() -> dict[str, float]:
    """Each test's duration in mutmut's clean run (its stats file, in the folder it runs tests in)."""
    try:
        return json.loads(Path("mutmut-stats.json").read_bytes())["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use the S3 server are marked ``s3``; with ``--mutation``, the selection above,
    fastest first: a mutant's run stops at its first failing test, so a caught one is caught sooner."""
    for item in items:
        if "s3" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.s3)
    if not config.getoption("--mutation"):
        return
    kept, left_out = [], []
    for item in items:
        detector = getattr(item, "callspec", None) and item.callspec.params.get("detector")
        if item.get_closest_marker("benchmark") or detector not in (None, MUTATION_DETECTOR):
            left_out.append(item)
        else:
            kept.append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
    durations = _durations_mutmut_recorded()
    items[:] = sorted(kept, key=lambda item: durations.get(item.nodeid, 0.0))
