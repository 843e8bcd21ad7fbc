"""Both connector backends (kafka-python, confluent-kafka) against a real broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kafka.admin import KafkaAdminClient

from connectors import BACKENDS, create_connector
from tests.kafka_helpers import publish, read_topic

pytestmark = pytest.mark.kafka


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> str:
    return request.param


def _poll_until(source, count: int, timeout: float = 30.0, poll_timeout: float = 0.2) -> list:
    messages, deadline = [], time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        messages += source.poll(timeout=poll_timeout, max_records=500)
    return messages


def test_source_reads_ranges_seeks_and_commits(kafka, new_topic, backend):
    topic = new_topic(partitions=2)
    publish(
        kafka.bootstrap_servers,
        topic,
        [str(i).encode() for i in range(200)],
        [str(i).encode() for i in range(200)],
    )
    connector = create_connector(backend, kafka.bootstrap_servers)
    source = connector.source([topic], f"group-{uuid.uuid4().hex[:6]}", "member-1")
    try:
        assigned: list = []
        source.on_assign = assigned.extend
        first = _poll_until(source, 200)
        assert len(first) == 200 and sorted(assigned) == [(topic, 0), (topic, 1)]
        per_partition = [sum(m.partition == p for m in first) for p in (0, 1)]
        assert min(per_partition) >= 20
        assert source.assignment() == {(topic, 0), (topic, 1)}
        assert source.committed((topic, 0)) is None and source.beginning_offset((topic, 0)) == 0

        window = list(source.read_range((topic, 0), 10, 20))
        assert [m.offset for m in window] == list(range(10, 20))
        assert list(source.read_range((topic, 0), 5, 5)) == []

        source.seek((topic, 0), per_partition[0] - 5)
        again = _poll_until(source, 5, timeout=10)
        assert [(m.partition, m.offset) for m in again] == [(0, per_partition[0] - 5 + i) for i in range(5)]

        source.commit({(topic, 0): (42, "")})
        assert source.committed((topic, 0)) == (42, "")
        assert source.lag() == {(topic, 0): 0, (topic, 1): 0}
    finally:
        source.close()


def test_transactional_sink_commits_offsets_with_the_records_or_aborts_both(kafka, new_topic, backend):
    topic, out = new_topic(), new_topic()
    publish(kafka.bootstrap_servers, topic, [b"x"] * 10)
    connector = create_connector(backend, kafka.bootstrap_servers)
    group = f"group-{uuid.uuid4().hex[:6]}"
    source = connector.source([topic], group, "member-1")
    sink = connector.sink(f"tx-{uuid.uuid4().hex[:6]}")
    try:
        _poll_until(source, 10)
        sink.begin()
        sink.send(out, b"aborted")
        sink.abort()
        assert source.committed((topic, 0)) is None
        sink.begin()
        sink.send(out, b'"committed"')
        sink.commit({(topic, 0): (10, "snapshot-id")}, source.group_metadata())
        assert source.committed((topic, 0)) == (10, "snapshot-id")
        assert read_topic(kafka.bootstrap_servers, out, 1, timeout=10) == ["committed"]
    finally:
        sink.close()
        source.close()


def test_ensure_topics_creates_missing_topics_once(kafka, backend):
    name = f"created-{uuid.uuid4().hex[:6]}"
    connector = create_connector(backend, kafka.bootstrap_servers)
    connector.ensure_topics([name], partitions=3)
    connector.ensure_topics([name], partitions=3)  # already there: no error
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        (description,) = admin.describe_topics([name])
        assert len(description["partitions"]) == 3
    finally:
        admin.close()


def test_a_failed_delivery_is_raised_by_flush_not_lost(kafka, backend):
    from kafka.admin import NewTopic

    topic = f"tiny-{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "1000"})])
    admin.close()
    sink = create_connector(backend, kafka.bootstrap_servers).sink(None)
    try:
        sink.send(topic, b"x" * 5000)
        with pytest.raises(Exception, match=r"(?i)MessageSizeTooLarge|message size too large"):
            sink.flush()  # kafka-python's own flush returns quietly here; librdkafka's reports by callback
    finally:
        sink.close()


def test_committed_positions_carry_their_metadata(kafka, backend, new_topic):
    topic = new_topic()
    publish(kafka.bootstrap_servers, topic, [b"x"] * 3)
    connector = create_connector(backend, kafka.bootstrap_servers)
    source = connector.source([topic], f"g-{uuid.uuid4().hex[:6]}", "m")
    try:
        _poll_until(source, 3)
        source.commit({(topic, 0): (3, "00000007-checkpoint")})
        assert source.committed((topic, 0)) == (3, "00000007-checkpoint")
    finally:
        source.close()


def _new_members(connector, topic: str, count: int = 3) -> Iterator:
    """``count`` sources in turn, each the first member of a new group on ``topic``."""
    for _ in range(count):
        source = connector.source([topic], f"g-{uuid.uuid4().hex[:6]}", "m")
        try:
            yield source
        finally:
            source.close()


@pytest.fixture
def hundred_events(kafka, new_topic) -> str:
    topic = new_topic()
    publish(kafka.bootstrap_servers, topic, [str(i).encode() for i in range(100)])
    return topic


def test_a_seek_right_after_the_assignment_takes_effect(kafka, hundred_events, backend):
    # librdkafka refuses seeks until the fetcher starts: a race, met by returning from a poll as soon
    # as the assignment is noted.
    for source in _new_members(create_connector(backend, kafka.bootstrap_servers), hundred_events):
        assigned: list = []
        source.on_assign = assigned.extend
        deadline = time.monotonic() + 30
        while not assigned and time.monotonic() < deadline:
            source.poll(timeout=0.001, max_records=500)
        assert assigned
        source.seek((hundred_events, 0), 50)
        assert _poll_until(source, 50)[0].offset == 50


def test_a_new_member_reads_when_polls_are_shorter_than_the_group_join(kafka, hundred_events, backend):
    # A member may join before its first metadata names the topic, and join again once it does.
    # kafka-python 3.0.12 drops that second join's result when the poll that started it has
    # returned (here: 1 ms polls), and then never reads; the source must get its partitions anyway.
    for source in _new_members(create_connector(backend, kafka.bootstrap_servers), hundred_events):
        messages = _poll_until(source, 100, poll_timeout=0.001)
        assert [m.offset for m in messages] == list(range(100))


def test_a_paused_partition_gives_nothing_until_resumed_and_a_reader_without_topics_joins_no_group(
    kafka, new_topic, backend
):
    topics = [new_topic(), new_topic()]
    for topic in topics:
        publish(kafka.bootstrap_servers, topic, [str(i).encode() for i in range(50)])
    connector = create_connector(backend, kafka.bootstrap_servers)
    source = connector.source(topics, f"group-{uuid.uuid4().hex[:6]}", "member-1")
    try:
        source.pause([(topics[1], 0)])  # not assigned yet: nothing to pause, and no error
        deadline = time.monotonic() + 30
        while source.assignment() != {(topics[0], 0), (topics[1], 0)} and time.monotonic() < deadline:
            source.poll(timeout=0.2, max_records=500)
        source.pause([(topics[1], 0)])
        for partition in source.assignment():
            source.seek(partition, 0)
        seen = _poll_until(source, 60, timeout=5)
        assert {m.topic for m in seen} == {topics[0]} and len(seen) == 50
        source.resume([(topics[1], 0)])
        assert {m.topic for m in _poll_until(source, 50)} == {topics[1]}
    finally:
        source.close()
    reader = connector.source([], f"group-{uuid.uuid4().hex[:6]}", "reader")
    try:
        assert [m.offset for m in reader.read_range((topics[0], 0), 0, 50)] == list(range(50))
        assert reader.end_offset((topics[0], 0)) == 50 and reader.assignment() == set()
    finally:
        started = time.monotonic()
        reader.close()
        assert time.monotonic() - started < 5  # nothing to leave
