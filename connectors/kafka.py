"""The kafka-python backend of the connector interface.

Consumers use manual offsets (no auto-commit) and ``read_committed`` isolation, static group
membership (a restarted instance takes its partitions back without waiting for a session
timeout), and the classic group protocol (kafka-python does not implement KIP-848). Producers in
exactly-once mode are transactional: predictions, dead letters and the consumer offsets of a
checkpoint are committed in one transaction, fenced per instance by its ``transactional_id``.

Security settings (``security_protocol``, ``sasl_*``, ``ssl_*``) pass through
``kafka.client_options`` in the config to every client.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from connectors.base import Connector, Message, Position, Sink, Source, TopicPartition, warn_about_gap

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# Blocking client calls raise after this instead of waiting forever (kafka-python's default).
REQUEST_TIMEOUT_MS = 30_000


class _Listener(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.source.on_revoke([(tp.topic, tp.partition) for tp in revoked])

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.source.on_assign([(tp.topic, tp.partition) for tp in assigned])


class KafkaSource(Source):
    def __init__(self, topics: list[str], group_id: str, instance_id: str, options: dict[str, Any]) -> None:
        self._options = options
        self.on_assign: Callable[[list[TopicPartition]], None] = lambda partitions: None
        self.on_revoke: Callable[[list[TopicPartition]], None] = lambda partitions: None
        self.consumer = KafkaConsumer(
            group_id=group_id,
            group_instance_id=instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_bytes=MAX_MESSAGE_BYTES * 2,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            **{"session_timeout_ms": 10_000, "heartbeat_interval_ms": 1_000, **options},
        )
        self.consumer.subscribe(topics, listener=_Listener(self))

    def poll(self, timeout: float, max_records: int) -> list[Message]:
        batches = self.consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        self._collect_a_dropped_join()
        return [
            Message(record.topic, record.partition, record.offset, record.key, record.value, record.timestamp)
            for records in batches.values()
            for record in records
        ]

    def _collect_a_dropped_join(self) -> None:
        """Work around a kafka-python 3.0.12 bug that leaves a member without partitions for good.

        A join started because the topics' metadata changed (a new member's first join often
        precedes the metadata that names its topic) outlives a short poll; once the leader has
        computed the assignment, ``need_rejoin()`` is False and no later poll collects the finished
        join. The member stays "rebalancing" with no partitions and no heartbeats. A rejoin request
        makes the next poll join again. (Reads the client's private state, and does nothing if a
        later release renames it; ``test_a_new_member_reads_when_polls_are_shorter_than_the_group_join``
        tells whether that release still needs it.)
        """
        coordinator = self.consumer._coordinator
        join = getattr(coordinator, "_join_task", None)
        dropped = getattr(coordinator, "rejoining", False) and join is not None and join.is_done
        if dropped and not coordinator.need_rejoin():
            logger.info("kafka-python dropped a finished group join; joining again")
            coordinator.request_rejoin()

    def assignment(self) -> set[TopicPartition]:
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.consumer.seek(KafkaTopicPartition(*partition), offset)

    def committed(self, partition: TopicPartition) -> Position | None:
        committed = self.consumer.committed(
            KafkaTopicPartition(*partition), metadata=True, timeout_ms=REQUEST_TIMEOUT_MS
        )
        return None if committed is None else (committed.offset, committed.metadata or "")

    def beginning_offset(self, partition: TopicPartition) -> int:
        tp = KafkaTopicPartition(*partition)
        return self.consumer.beginning_offsets([tp], timeout_ms=REQUEST_TIMEOUT_MS)[tp]

    def lag(self) -> dict[TopicPartition, int]:
        result = {}
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            position = self.consumer.position(tp, timeout_ms=0)  # for status: what is known, no round trip
            if highwater is not None and position is not None:
                result[(tp.topic, tp.partition)] = max(0, highwater - position)
        return result

    def read_range(
        self, partition: TopicPartition, start: int, end: int, timeout: float = 120.0
    ) -> list[Message]:
        if end <= start:
            return []
        tp = KafkaTopicPartition(*partition)
        reader = KafkaConsumer(
            enable_auto_commit=False, isolation_level="read_committed", auto_offset_reset="earliest",
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES, **self._options,
        )  # fmt: skip
        try:
            reader.assign([tp])
            reader.seek(tp, start)
            messages: list[Message] = []
            deadline = time.monotonic() + timeout
            while reader.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"could not read {partition} offsets {start}..{end} within {timeout:.0f}s"
                    )
                for record in reader.poll(timeout_ms=1000).get(tp, []):
                    if record.offset >= end:
                        break
                    messages.append(
                        Message(record.topic, record.partition, record.offset, record.key, record.value)
                    )
            warn_about_gap(partition, start, messages)
            return messages
        finally:
            reader.close()

    def commit(self, positions: dict[TopicPartition, Position]) -> None:
        self.consumer.commit(_kafka_offsets(positions), timeout_ms=REQUEST_TIMEOUT_MS)

    def group_metadata(self) -> object:
        return self.consumer.group_metadata()

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def _kafka_offsets(positions: dict[TopicPartition, Position]) -> dict[KafkaTopicPartition, OffsetAndMetadata]:
    return {
        KafkaTopicPartition(*tp): OffsetAndMetadata(offset, metadata, -1)
        for tp, (offset, metadata) in positions.items()
    }


class KafkaSink(Sink):
    def __init__(self, transactional_id: str | None, options: dict[str, Any]) -> None:
        self.transactional = transactional_id is not None
        settings: dict[str, Any] = {
            "linger_ms": 5,
            "max_request_size": MAX_MESSAGE_BYTES,
            "acks": "all",
            **options,
        }
        if transactional_id is not None:
            settings["transactional_id"] = transactional_id
            settings["transaction_timeout_ms"] = 30_000
        self.producer = KafkaProducer(**settings)
        self._unconfirmed: list[Any] = []  # sends since the last flush (non-transactional)
        if self.transactional:
            try:
                # Fences any older producer with this id and aborts its open transaction.
                self.producer.init_transactions()
            except Exception:
                self.producer.close(timeout=1)
                raise

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: list | None = None) -> None:
        future = self.producer.send(topic, value=value, key=key, headers=headers)
        if not self.transactional:
            self._unconfirmed.append(future)

    def begin(self) -> None:
        if self.transactional:
            self.producer.begin_transaction()

    def commit(self, positions: dict[TopicPartition, Position], group_metadata: object) -> None:
        if not self.transactional:
            self.flush()
            return
        if positions:
            self.producer.send_offsets_to_transaction(_kafka_offsets(positions), group_metadata)
        self.producer.commit_transaction()  # raises if any send in the transaction failed

    def abort(self) -> None:
        if self.transactional:
            self.producer.abort_transaction()

    def flush(self) -> None:
        """Wait for every send; raise the first delivery failure (kafka-python's flush does not)."""
        self.producer.flush()
        unconfirmed, self._unconfirmed = self._unconfirmed, []
        for future in unconfirmed:
            if future.failed():
                raise future.exception

    def close(self) -> None:
        self.producer.close(timeout=5)


class KafkaPythonConnector(Connector):
    """Sources and sinks on kafka-python, with the config's client options."""

    source_class = KafkaSource
    sink_class = KafkaSink
    bootstrap_option = "bootstrap_servers"

    def ensure_topics(self, topics: list[str], partitions: int = 1) -> None:
        admin = KafkaAdminClient(**self.options)
        try:
            existing = set(admin.list_topics())
            missing = [
                NewTopic(t, num_partitions=partitions, replication_factor=1)
                for t in topics
                if t not in existing
            ]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics(missing)
        finally:
            admin.close()
