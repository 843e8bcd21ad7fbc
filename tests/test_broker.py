"""The broker the tests use is a real, fully working Apache Kafka."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from kafka_local import kafka_version
from tests import REPO_ROOT


def _consume_all(bootstrap: str, topic: str, expected: int, **options) -> list[bytes]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
        **options,
    )
    values = []
    for message in consumer:
        values.append(message.value)
        if len(values) >= expected:
            break
    consumer.close()
    return values


@pytest.mark.kafka
def test_ten_thousand_events_reach_a_consumer_group_with_committed_offsets(kafka, new_topic):
    topic = new_topic(partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=5)
    for i in range(10_000):
        producer.send(topic, key=str(i % 17).encode(), value=str(i).encode())
    producer.flush()
    producer.close()

    group = f"group-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
    )
    seen = []
    for message in consumer:
        seen.append(int(message.value))
        if len(seen) == 10_000:
            break
    consumer.commit()
    partitions = [TopicPartition(topic, p) for p in range(3)]
    committed = sum(consumer.committed(tp) for tp in partitions)
    consumer.close()

    assert sorted(seen) == list(range(10_000))
    assert committed == 10_000

    # A second member of the same group resumes after the committed offsets: nothing left.
    again = KafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3_000,
    )
    assert list(again) == []
    again.close()


@pytest.mark.kafka
def test_read_committed_consumer_sees_committed_transactions_and_not_aborted_ones(kafka, new_topic):
    topic = new_topic()
    producer = KafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, transactional_id=f"tx-{uuid.uuid4().hex[:8]}"
    )
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(5):
        producer.send(topic, f"committed-{i}".encode())
    producer.commit_transaction()
    producer.begin_transaction()
    for i in range(5):
        producer.send(topic, f"aborted-{i}".encode())
    producer.flush()
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send(topic, b"committed-last")
    producer.commit_transaction()
    producer.close()

    committed = _consume_all(kafka.bootstrap_servers, topic, 6, isolation_level="read_committed")
    assert committed == [f"committed-{i}".encode() for i in range(5)] + [b"committed-last"]
    # A read_uncommitted reader does see the aborted records: the filter above is real.
    everything = _consume_all(kafka.bootstrap_servers, topic, 11)
    assert sum(value.startswith(b"aborted") for value in everything) == 5


@pytest.mark.kafka
def test_kcat_sees_the_same_messages_as_kafka_python(kafka, new_topic):
    kcat = shutil.which("kcat")
    assert kcat, "kcat is not installed: run `make setup` (it installs the Debian package kcat)"
    topic = new_topic()
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    sent = [f"message-{i}" for i in range(100)]
    for value in sent:
        producer.send(topic, value.encode())
    producer.flush()
    producer.close()

    result = subprocess.run(
        [kcat, "-C", "-b", kafka.bootstrap_servers, "-t", topic, "-e", "-q", "-f", "%s\n"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.splitlines() == sent

    subprocess.run(
        [kcat, "-P", "-b", kafka.bootstrap_servers, "-t", topic],
        input="from-kcat\n",
        text=True,
        timeout=60,
        check=True,
    )
    assert _consume_all(kafka.bootstrap_servers, topic, 101)[-1] == b"from-kcat"


def test_compose_file_runs_the_official_kafka_image_in_kraft_mode_and_the_service():
    compose = yaml.safe_load((REPO_ROOT / "docker" / "docker-compose.yml").read_text())
    kafka_service = compose["services"]["kafka"]
    assert kafka_service["image"].startswith("apache/kafka:")
    assert kafka_service["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    stream_service = compose["services"]["stream"]
    assert stream_service["build"]["dockerfile"] == "docker/Dockerfile"
    assert (REPO_ROOT / stream_service["build"]["dockerfile"]).exists()
    assert stream_service["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_pom_pins_a_kafka_4_broker():
    assert kafka_version().split(".")[0] == "4"


def test_cluster_ids_never_start_with_a_dash_the_storage_tool_would_read_as_an_option():
    from kafka_local import cluster_id

    ids = [cluster_id() for _ in range(5000)]  # about 78 of 5,000 raw ids would start with "-"
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == 5000
