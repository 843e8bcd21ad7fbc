"""The kafka-python backend of the connector interface.

Consumers use manual offsets (no auto-commit) and ``read_committed`` isolation, static group
membership (a restarted instance takes its partitions back without waiting for a session
timeout), and the classic group protocol (kafka-python does not implement KIP-848). Producers in
exactly-once mode are transactional: predictions, dead letters and the consumer offsets of a
checkpoint are committed in one transaction, fenced per instance by its ``transactional_id``.

Options pass through from the config in kafka-python's spelling: ``kafka.client_options`` to
every client (``security_protocol``, ``sasl_*``, ``ssl_*``), ``kafka.consumer_options`` and
``kafka.producer_options`` to consumers and producers only. Every blocking call is bounded by
``kafka.request_timeout_seconds``, the transactional ones too (kafka-python's own wait for ever).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from connectors.base import (
    ClientSettings,
    Connector,
    Message,
    Position,
    Sink,
    Source,
    TopicPartition,
    warn_about_gap,
)

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class _Listener(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.source.on_revoke([(tp.topic, tp.partition) for tp in revoked])

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.source.on_assign([(tp.topic, tp.partition) for tp in assigned])


def _timeout_ms(settings: ClientSettings) -> int:
    return int(settings.request_timeout * 1000)


class KafkaSource(Source):
    def __init__(
        self, topics: list[str], group_id: str, instance_id: str, bootstrap: str, settings: ClientSettings
    ) -> None:
        self._bootstrap = bootstrap
        self._options = settings.consumer_options
        self._timeout_ms = _timeout_ms(settings)
        self.on_assign: Callable[[list[TopicPartition]], None] = lambda partitions: None
        self.on_revoke: Callable[[list[TopicPartition]], None] = lambda partitions: None
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            group_instance_id=instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            allow_auto_create_topics=False,  # the operator creates the input topic, with its partitions
            # Partition p of every subscribed topic to one member: co-partitioned events and labels.
            partition_assignment_strategy=(RangePartitionAssignor,),
            bootstrap_timeout_ms=self._timeout_ms,
            fetch_max_bytes=MAX_MESSAGE_BYTES * 2,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            **{"session_timeout_ms": 10_000, "heartbeat_interval_ms": 1_000, **self._options},
        )
        if topics:  # none: a reader of ranges (read_range, offsets), never a group member
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

    def keep_alive(self) -> None:
        assigned = self.consumer.assignment()
        self.consumer.pause(*assigned)
        try:
            # At once: a rejoin takes its next step with whatever the broker has answered since
            # the last keep-alive; waiting here would take the re-learning's time (a wait of 0.1 s
            # every 0.5 s made restores a sixth slower). Paused partitions return nothing.
            self.poll(timeout=0, max_records=1)
        finally:
            self.consumer.resume(*(assigned & self.consumer.assignment()))

    def assignment(self) -> set[TopicPartition]:
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.consumer.pause(*self._assigned(partitions))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.consumer.resume(*self._assigned(partitions))

    def _assigned(self, partitions: list[TopicPartition]) -> list[KafkaTopicPartition]:
        """Those of ``partitions`` still assigned (a rebalance may have taken one since)."""
        assigned = self.consumer.assignment()
        return [tp for tp in (KafkaTopicPartition(*partition) for partition in partitions) if tp in assigned]

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.consumer.seek(KafkaTopicPartition(*partition), offset)

    def committed(self, partition: TopicPartition) -> Position | None:
        committed = self.consumer.committed(
            KafkaTopicPartition(*partition), metadata=True, timeout_ms=self._timeout_ms
        )
        return None if committed is None else (committed.offset, committed.metadata or "")

    def beginning_offset(self, partition: TopicPartition) -> int:
        tp = KafkaTopicPartition(*partition)
        return self.consumer.beginning_offsets([tp], timeout_ms=self._timeout_ms)[tp]

    def end_offset(self, partition: TopicPartition) -> int:
        tp = KafkaTopicPartition(*partition)  # read_committed: the last stable offset
        return self.consumer.end_offsets([tp], timeout_ms=self._timeout_ms)[tp]

    def lag(self) -> dict[TopicPartition, int]:
        result = {}
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            position = self.consumer.position(tp, timeout_ms=0)  # for status: what is known, no round trip
            if highwater is not None and position is not None:
                result[(tp.topic, tp.partition)] = max(0, highwater - position)
        return result

    def read_range(
        self, partition: TopicPartition, start: int, end: int, stall_timeout: float = 120.0
    ) -> Iterator[Message]:
        if end <= start:
            return
        tp = KafkaTopicPartition(*partition)
        reader = KafkaConsumer(
            bootstrap_servers=self._bootstrap, enable_auto_commit=False, isolation_level="read_committed",
            auto_offset_reset="earliest", max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            bootstrap_timeout_ms=self._timeout_ms, **self._options,
        )  # fmt: skip
        try:
            reader.assign([tp])
            reader.seek(tp, start)
            first = True
            stalled = 0.0
            # The position, not the last record, tells when ``end`` is passed: with read_committed
            # the last offsets may be transaction markers, which are never delivered.
            while reader.position(tp, timeout_ms=self._timeout_ms) < end:
                if stalled > stall_timeout:
                    raise TimeoutError(
                        f"could not read {partition} offsets {start}..{end}: "
                        f"nothing came for {stall_timeout:.0f} s"
                    )
                began = time.monotonic()
                records = reader.poll(timeout_ms=1000).get(tp, [])
                stalled = 0.0 if records else stalled + time.monotonic() - began
                for record in records:
                    if record.offset >= end:
                        return
                    message = Message(record.topic, record.partition, record.offset, record.key, record.value)
                    if first:
                        warn_about_gap(partition, start, message)
                        first = False
                    yield message
        finally:
            reader.close(timeout_ms=self._timeout_ms)

    def commit(self, positions: dict[TopicPartition, Position]) -> None:
        self.consumer.commit(_kafka_offsets(positions), timeout_ms=self._timeout_ms)

    def group_metadata(self) -> object:
        return self.consumer.group_metadata()

    def close(self) -> None:
        self.consumer.close(autocommit=False, timeout_ms=self._timeout_ms)


def _kafka_offsets(positions: dict[TopicPartition, Position]) -> dict[KafkaTopicPartition, OffsetAndMetadata]:
    return {
        KafkaTopicPartition(*tp): OffsetAndMetadata(offset, metadata, -1)
        for tp, (offset, metadata) in positions.items()
    }


class KafkaSink(Sink):
    def __init__(self, transactional_id: str | None, bootstrap: str, settings: ClientSettings) -> None:
        self.transactional = transactional_id is not None
        self._timeout_ms = _timeout_ms(settings)
        options: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "linger_ms": 5,
            # librdkafka's default: kafka-python's 16 KB closes a batch every ~100 predictions, and
            # each new batch wakes its sender thread, which then competes for the GIL.
            "batch_size": 1_000_000,
            "max_request_size": MAX_MESSAGE_BYTES,
            "acks": "all",
            "max_block_ms": self._timeout_ms,  # send() waits this long at most for metadata or memory
            "bootstrap_timeout_ms": self._timeout_ms,
            **settings.producer_options,
        }
        if transactional_id is not None:
            options["transactional_id"] = transactional_id
            options["transaction_timeout_ms"] = int(settings.transaction_timeout * 1000)
        self.producer = KafkaProducer(**options)
        self._unconfirmed: list[Any] = []  # sends since the last flush (non-transactional)
        if self.transactional:
            try:
                # Fences any older producer with this id and aborts its open transaction.
                self.producer.init_transactions()  # bounded by max_block_ms
            except Exception:
                self.producer.close(timeout=1)
                raise

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list | None = None,
        partition: int | None = None,
    ) -> None:
        future = self.producer.send(topic, value=value, key=key, headers=headers, partition=partition)
        if not self.transactional:
            self._unconfirmed.append(future)

    def begin(self) -> None:
        if self.transactional:
            self.producer.begin_transaction()

    def commit(self, positions: dict[TopicPartition, Position], group_metadata: object) -> None:
        if not self.transactional:
            self.flush()
            return
        transactions = self.producer._transaction_manager
        if positions:
            offsets = _kafka_offsets(positions)
            self._wait(transactions.send_offsets_to_transaction(offsets, group_metadata), "sending offsets")
        self._wait(transactions.begin_commit(), "committing")  # raises if any send in it failed

    def abort(self) -> None:
        if self.transactional:
            self._wait(self.producer._transaction_manager.begin_abort(), "aborting")

    def _wait(self, result: Any, what: str) -> None:
        """What ``KafkaProducer.send_offsets_to_transaction``, ``commit_transaction`` and
        ``abort_transaction`` do, with a bound: they wait for ever (a broker that went away and came
        back held one for 53 s). Reads the producer's private parts, as those methods do."""
        self.producer._sender.wakeup()
        if not result.wait(timeout_ms=self._timeout_ms):
            raise KafkaTimeoutError(f"{what} the transaction took over {self._timeout_ms / 1000:.0f} s")

    def flush(self) -> None:
        """Wait for every send; raise the first delivery failure (kafka-python's flush does not)."""
        self.producer.flush(timeout=self._timeout_ms / 1000)  # raises KafkaTimeoutError past it
        unconfirmed, self._unconfirmed = self._unconfirmed, []
        for future in unconfirmed:
            if future.failed():
                raise future.exception

    def close(self) -> None:
        try:
            self.producer.close(timeout=5)
        except KafkaTimeoutError:
            # kafka-python flushes first, and when that times out (a frozen broker) it never stops
            # its sender: a zombie in this process that sends its batches when the broker is back,
            # after a new producer took the transactional id over. Stop it for good.
            sender = self.producer._sender
            if sender is not None:
                sender.force_close()
                sender.join(5)
            self.producer.close(timeout=0)


class KafkaPythonConnector(Connector):
    """Sources and sinks on kafka-python, with the config's client options."""

    source_class = KafkaSource
    sink_class = KafkaSink
    client_errors = (KafkaError, TimeoutError)

    def _admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            request_timeout_ms=_timeout_ms(self.settings),
            bootstrap_timeout_ms=_timeout_ms(self.settings),
            **self.settings.common,
        )

    def partition_count(self, topic: str) -> int | None:
        admin = self._admin()
        try:
            (described,) = admin.describe_topics([topic])
        finally:
            admin.close()
        if described.get("error_code", 0) != 0:  # UNKNOWN_TOPIC_OR_PARTITION, most likely
            return None
        return len(described["partitions"]) or None

    def max_message_bytes(self, topics: list[str]) -> dict[str, int]:
        admin = self._admin()
        try:
            wanted = [
                ConfigResource(ConfigResourceType.TOPIC, t, {"max.message.bytes": None}) for t in topics
            ]
            described = admin.describe_configs(wanted, config_filter="all")["topic"]
        finally:
            admin.close()
        return {topic: int(configs["max.message.bytes"]["value"]) for topic, configs in described.items()}

    def ensure_topics(
        self, topics: list[str], partitions: int = 1, configs: dict[str, str] | None = None
    ) -> None:
        admin = self._admin()
        try:
            existing = set(admin.list_topics())
            missing = [
                NewTopic(t, num_partitions=partitions, replication_factor=1, topic_configs=configs or {})
                for t in topics
                if t not in existing
            ]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics(missing)
        finally:
            admin.close()
