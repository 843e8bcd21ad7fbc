"""Shared fixtures. Kafka tests always run against a real Apache Kafka broker.

The broker is, in order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; a testcontainers Kafka when a
Docker engine answers; otherwise the project's local KRaft broker (jars from Maven Central).
If none can be had the run fails with instructions; it never skips silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings
from kafka.admin import KafkaAdminClient, NewTopic

import stream.snapshots
from kafka_local import BrokerError, LocalBroker

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


@pytest.fixture
def file_steps(monkeypatch):
    """Snapshot file operations report to the crash plan of the broker under test, once there is one."""
    kafkas: list = []  # the FakeKafka under test
    write, rename = stream.snapshots._write_durably, os.rename

    def reported_write(path, data):
        if kafkas:
            kafkas[0].plan.reached("snapshot.write")
        write(path, data)

    def reported_rename(source, target):
        if kafkas:
            kafkas[0].plan.reached("snapshot.rename")
        rename(source, target)

    monkeypatch.setattr(stream.snapshots, "_write_durably", reported_write)
    monkeypatch.setattr(stream.snapshots.os, "rename", reported_rename)
    return kafkas
