"""An in-memory Kafka behind the connector interface, that can die at any client call.

It keeps what the protocol relies on: per-partition logs with offsets, a consumer group's
committed offsets with metadata, transactions whose records and offsets become visible together
on commit (and are dropped on abort or when the producer dies), read_committed reads, and
producer buffers that a dead process never delivered. A :class:`CrashPlan` raises
:class:`Killed` (a ``BaseException``, so no ``except Exception`` in the service can catch it, as
no code survives a SIGKILL) at the n-th call of a named step.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from connectors.base import ClientSettings, Connector, Message, Position, Sink, Source, TopicPartition


class Killed(BaseException):
    """The process died here."""


class Misuse(BaseException):
    """The service used a client as a real one would refuse: the test fails at once (a
    ``BaseException``, so the service cannot take it for a lost broker and retry for ever)."""


def require(condition: bool, what: str) -> None:
    if not condition:
        raise Misuse(what)


@dataclass
class CrashPlan:
    """Die at the ``at``-th call of ``step`` (1-based); ``calls`` counts every step's calls."""

    step: str = ""
    at: int = 0
    calls: dict[str, int] = field(default_factory=dict)

    def reached(self, step: str) -> None:
        self.calls[step] = self.calls.get(step, 0) + 1
        if step == self.step and self.calls[step] == self.at:
            raise Killed(f"killed at {step} #{self.at}")


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp_ms: int = -1


class FakeKafka:
    """The broker: topics of one or more partitions, and committed group offsets."""

    def __init__(self, partitions: int = 1, batch: int = 100) -> None:
        self.default_partitions = partitions
        self.batch = batch  # records per poll at most: small batches, many step boundaries
        self.interleave = 0  # records a poll takes from each partition in turn; 0: all it can
        self.logs: dict[TopicPartition, list[Record]] = {}
        self.group_offsets: dict[tuple[str, TopicPartition], Position] = {}
        self.log_start: dict[TopicPartition, int] = {}  # where retention has left a log beginning
        self.plan = CrashPlan()
        self.on_idle: Callable[[], None] = lambda: None  # called when a source has read everything
        # Called with the source and the records a poll is about to return: a test can change the
        # group there, as a real client runs its rebalance callbacks inside the poll that fetched.
        self.on_poll: Callable[[FakeSource, list[Message]], None] = lambda source, messages: None
        self.max_message_bytes = 1_048_588  # Kafka's default for a topic
        self.longest_silence = 0.0  # seconds a member went without polling: what max.poll.interval.ms bounds

    def create(self, topic: str, partitions: int | None = None) -> None:
        for partition in range(partitions or self.default_partitions):
            self.logs.setdefault((topic, partition), [])

    def append(self, topic: str, values: list[bytes], timestamps_ms: list[int] | None = None) -> None:
        """Records spread over the topic's partitions in turn, with their produce times if given."""
        self.create(topic)
        partitions = sorted(tp for tp in self.logs if tp[0] == topic)
        for number, value in enumerate(values):
            timestamp = timestamps_ms[number] if timestamps_ms else -1
            self.logs[partitions[number % len(partitions)]].append(
                Record(None, value, timestamp_ms=timestamp)
            )

    def records(self, topic: str) -> list[Record]:
        """Everything a read_committed reader sees in ``topic``, with keys and headers."""
        return [record for tp in sorted(tp for tp in self.logs if tp[0] == topic) for record in self.logs[tp]]

    def values(self, topic: str) -> list[bytes]:
        """The values of :meth:`records`."""
        return [record.value or b"" for record in self.records(topic)]

    def connector(self) -> FakeConnector:
        return FakeConnector(self)


class FakeSource(Source):
    def __init__(
        self, topics: list[str], group_id: str, instance_id: str, bootstrap: str, settings: ClientSettings
    ) -> None:
        self.kafka: FakeKafka = FakeConnector.brokers[bootstrap]
        self.group_id = group_id
        self.topics = topics
        self.on_assign = lambda partitions: None
        self.on_revoke = lambda partitions: None
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self._assigned = False
        self._last_poll = time.monotonic()

    def _heard_from(self) -> None:
        now = time.monotonic()
        self.kafka.longest_silence = max(self.kafka.longest_silence, now - self._last_poll)
        self._last_poll = now

    def keep_alive(self) -> None:
        self.kafka.plan.reached("keep_alive")
        self._heard_from()

    def poll(self, timeout: float, max_records: int) -> list[Message]:
        self.kafka.plan.reached("poll")
        self._heard_from()
        if not self._assigned:
            self._assigned = True
            assigned = sorted(tp for tp in self.kafka.logs if tp[0] in self.topics)
            for tp in assigned:
                committed = self.committed(tp)
                self.positions[tp] = committed[0] if committed else self.beginning_offset(tp)
            self.on_assign(assigned)
            return []
        messages: list[Message] = []
        max_records = min(max_records, self.kafka.batch)
        # Each partition in turn, ``interleave`` records at a time (all it has, by default).
        chunk = self.kafka.interleave or max_records
        while len(messages) < max_records:
            before = len(messages)
            for tp, position in self.positions.items():
                if tp in self.paused:
                    continue
                log = self.kafka.logs[tp]
                end = min(len(log), position + chunk, position + max_records - len(messages))
                for offset in range(position, end):
                    record = log[offset]
                    messages.append(
                        Message(tp[0], tp[1], offset, record.key, record.value, record.timestamp_ms)
                    )
                self.positions[tp] = max(position, end)
            if len(messages) == before:
                break
        self.kafka.on_poll(self, messages)
        if not messages:
            self.kafka.on_idle()
        return messages

    def rebalance(self, keep: list[TopicPartition], announced: bool = True) -> None:
        """The group changed this member's partitions to ``keep``; ``announced=False``: the ones
        taken away were lost without a revocation callback."""
        gone = [tp for tp in self.positions if tp not in keep]
        if gone and announced:
            self.on_revoke(gone)
        for tp in gone:
            del self.positions[tp]
        added = [tp for tp in keep if tp not in self.positions]
        for tp in added:
            committed = self.committed(tp)
            self.positions[tp] = committed[0] if committed else self.beginning_offset(tp)
        self.on_assign(added)

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.update(partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update(partitions)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        # As the real clients refuse it: kafka-python with a ValueError, confluent-kafka a KafkaException.
        require(partition in self.positions, f"seek on {partition!r}, which is not assigned")
        self.positions[partition] = offset

    def committed(self, partition: TopicPartition) -> Position | None:
        return self.kafka.group_offsets.get((self.group_id, partition))

    def beginning_offset(self, partition: TopicPartition) -> int:
        require(partition in self.kafka.logs, f"no partition {partition!r}")
        return self.kafka.log_start.get(partition, 0)

    def end_offset(self, partition: TopicPartition) -> int:
        require(partition in self.kafka.logs, f"no partition {partition!r}")
        return len(self.kafka.logs[partition])

    def lag(self) -> dict[TopicPartition, int]:
        return {tp: len(self.kafka.logs[tp]) - position for tp, position in self.positions.items()}

    def read_range(
        self, partition: TopicPartition, start: int, end: int, stall_timeout: float = 120.0
    ) -> Iterator[Message]:
        log = self.kafka.logs[partition]
        for offset in range(start, end):
            yield Message(*partition, offset, log[offset].key, log[offset].value)

    def commit(self, positions: dict[TopicPartition, Position]) -> None:
        self.kafka.plan.reached("source.commit")
        for tp, position in positions.items():
            self.kafka.group_offsets[(self.group_id, tp)] = position

    def group_metadata(self) -> object:
        return self.group_id

    def close(self) -> None:
        pass


class FakeSink(Sink):
    def __init__(self, transactional_id: str | None, bootstrap: str, settings: ClientSettings) -> None:
        self.kafka: FakeKafka = FakeConnector.brokers[bootstrap]
        self.transactional = transactional_id is not None
        self.buffer: list[tuple[str, Record]] = []  # sent, not yet delivered (or in the open transaction)
        self.in_transaction = False

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list | None = None,
        partition: int | None = None,
    ) -> None:
        self.kafka.plan.reached("send")
        require(not self.transactional or self.in_transaction, "send outside a transaction")
        # What the real clients accept, or they raise.
        require(
            (value is None or isinstance(value, bytes)) and (key is None or isinstance(key, bytes)),
            "value and key are bytes (a tombstone's value is None)",
        )
        require(
            all(isinstance(name, str) and isinstance(data, bytes) for name, data in headers or []),
            "headers are (str, bytes) pairs",
        )
        size = (
            len(value or b"") + len(key or b"") + sum(len(name) + len(data) for name, data in headers or [])
        )
        require(size <= self.kafka.max_message_bytes, f"a record of {size} bytes, over max.message.bytes")
        self.buffer.append(((topic, partition or 0), Record(key, value, list(headers or []))))

    def _deliver(self) -> None:
        for (topic, partition), record in self.buffer:
            self.kafka.create(topic)
            require((topic, partition) in self.kafka.logs, f"no partition {(topic, partition)!r}")
            self.kafka.logs[(topic, partition)].append(record)
        self.buffer = []

    def begin(self) -> None:
        self.kafka.plan.reached("begin")
        if self.transactional:
            require(not self.in_transaction, "a transaction is already open")
            self.in_transaction = True

    def commit(self, positions: dict[TopicPartition, Position], group_metadata: object) -> None:
        if not self.transactional:
            self.flush()
            return
        self.kafka.plan.reached("transaction.commit")
        self._deliver()
        for tp, position in positions.items():
            self.kafka.group_offsets[(str(group_metadata), tp)] = position
        self.in_transaction = False
        self.kafka.plan.reached("transaction.committed")

    def abort(self) -> None:
        self.buffer, self.in_transaction = [], False

    def flush(self) -> None:
        self.kafka.plan.reached("flush")
        self._deliver()
        self.kafka.plan.reached("flushed")

    def close(self) -> None:
        if not self.transactional:
            self._deliver()


class FakeConnector(Connector):
    source_class = FakeSource
    sink_class = FakeSink
    # By bootstrap address, which the clients are built with; a test's broker goes with the test.
    brokers: weakref.WeakValueDictionary[str, FakeKafka] = weakref.WeakValueDictionary()

    def __init__(self, kafka: FakeKafka) -> None:
        super().__init__(f"fake-{id(kafka)}")
        self.brokers[self.bootstrap_servers] = kafka
        self.kafka = kafka
        self.connected = False

    def ensure_topics(
        self, topics: list[str], partitions: int = 1, configs: dict[str, str] | None = None
    ) -> None:
        for topic in topics:
            self.kafka.create(topic, partitions)

    def partition_count(self, topic: str) -> int | None:
        return sum(1 for tp in self.kafka.logs if tp[0] == topic) or None

    def max_message_bytes(self, topics: list[str]) -> dict[str, int]:
        return dict.fromkeys(topics, self.kafka.max_message_bytes)

    def source(self, topics: list[str], group_id: str, instance_id: str) -> Source:
        # The in-memory broker never fails; a service that connects twice recovered from an
        # error of its own, which would otherwise be retried for ever.
        require(not self.connected, "the service reconnected: one of its client calls raised")
        self.connected = True
        return super().source(topics, group_id, instance_id)
