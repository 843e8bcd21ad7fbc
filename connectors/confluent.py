"""The confluent-kafka (librdkafka) backend of the connector interface.

The same guarantees as :mod:`connectors.kafka`: manual offsets with ``read_committed``
isolation, static group membership, and in exactly-once mode a transactional producer that
commits predictions, dead letters and the checkpoint's consumer offsets in one transaction
(``send_offsets_to_transaction`` with the consumer's group metadata, KIP-447 fencing).

librdkafka fetches and sends on its own C threads, so consuming and producing cost a few
microseconds per record instead of tens (``benchmarks/run.py`` measures both backends). Rebalance
callbacks run inside ``consume`` on the caller's thread; they only take note, as the interface
asks. ``kafka.client_options`` are librdkafka properties here (``security.protocol``,
``sasl.mechanism``, ...), ``kafka.consumer_options`` and ``kafka.producer_options`` go to
consumers and producers only. A fatal client error (a static member fenced by another with the
same instance id, say) raises from the next ``poll``, so the service rebuilds its clients instead
of idling without partitions.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

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


def _is_fatal(error: KafkaError) -> bool:
    # A fatal consumer error (say, a static member fenced after an outage) arrives as an event
    # whose code is _FATAL while its own fatal flag is not set; the client is then unusable.
    return error.fatal() or error.code() == KafkaError._FATAL


def _log_client_error(error: KafkaError) -> None:
    # Broker-down and similar errors librdkafka retries by itself; operations that need the broker
    # (commit, committed offsets) raise on their own when it stays away.
    logger.warning("kafka client: %s", error)


class ConfluentSource(Source):
    def __init__(
        self, topics: list[str], group_id: str, instance_id: str, bootstrap: str, settings: ClientSettings
    ) -> None:
        self._options = {"bootstrap.servers": bootstrap, **settings.consumer_options}
        self._timeout = settings.request_timeout
        self._fatal: KafkaError | None = None  # a fatal error the client reported: it is unusable
        self.on_assign: Callable[[list[TopicPartition]], None] = lambda partitions: None
        self.on_revoke: Callable[[list[TopicPartition]], None] = lambda partitions: None
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "group.instance.id": instance_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "allow.auto.create.topics": False,  # the operator creates the input topic, with its partitions
            # Partition p of every subscribed topic to one member: co-partitioned events and labels.
            "partition.assignment.strategy": "range",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            "fetch.max.bytes": MAX_MESSAGE_BYTES * 2,
            "max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
            "error_cb": self._client_error,
            **settings.consumer_options,
        })  # fmt: skip
        # Seeks librdkafka refused because the partition's fetcher had not started yet.
        self._pending_seeks: dict[TopicPartition, int] = {}
        if topics:  # none: a reader of ranges (read_range, offsets), never a group member
            self.consumer.subscribe(
                topics,
                on_assign=lambda _, assigned: self.on_assign(_partitions(assigned)),
                on_revoke=lambda _, revoked: self._revoked(_partitions(revoked)),
                on_lost=lambda _, lost: self._revoked(_partitions(lost)),
            )

    def _client_error(self, error: KafkaError) -> None:
        # Called from inside consume, on this thread; poll raises what was fatal.
        if _is_fatal(error):
            self._fatal = error
        _log_client_error(error)

    def _revoked(self, partitions: list[TopicPartition]) -> None:
        for partition in partitions:
            self._pending_seeks.pop(partition, None)
        self.on_revoke(partitions)

    def poll(self, timeout: float, max_records: int) -> list[Message]:
        if self._pending_seeks:
            self._apply_seeks()
        pending = self._pending_seeks
        # librdkafka's consume waits for max_records or the timeout: under a light load that would
        # hold every event for up to the timeout. So: take what is there; if nothing, wait for one.
        records = self.consumer.consume(max_records, 0)
        if not records:
            records = self.consumer.consume(1, timeout)
        if self._fatal is not None:
            raise KafkaException(self._fatal)  # the service rebuilds its clients
        messages = []
        for record in records:
            error = record.error()
            if error is not None:
                if _is_fatal(error):
                    raise KafkaException(error)
                logger.warning("kafka consumer: %s", error)
                continue
            if pending and (record.topic(), record.partition()) in pending:
                continue  # read from before the seek that is still to happen
            messages.append(
                Message(
                    record.topic(), record.partition(), record.offset(), record.key(), record.value(),
                    record.timestamp()[1],
                )
            )  # fmt: skip
        return messages

    def keep_alive(self) -> None:
        assigned = self.consumer.assignment()
        self.consumer.pause(assigned)
        try:
            # At once: librdkafka runs the group protocol on its own threads; the poll serves its
            # callbacks and restarts max.poll.interval.ms. Paused partitions return nothing new.
            self.poll(timeout=0, max_records=1)
        finally:
            current = set(_partitions(self.consumer.assignment()))
            self.consumer.resume([tp for tp in assigned if (tp.topic, tp.partition) in current])

    def assignment(self) -> set[TopicPartition]:
        return set(_partitions(self.consumer.assignment()))

    def pause(self, partitions: list[TopicPartition]) -> None:
        assigned = self.assignment()  # a rebalance may have taken one since
        self.consumer.pause([KafkaTopicPartition(*tp) for tp in partitions if tp in assigned])

    def resume(self, partitions: list[TopicPartition]) -> None:
        assigned = self.assignment()
        self.consumer.resume([KafkaTopicPartition(*tp) for tp in partitions if tp in assigned])

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._pending_seeks[partition] = offset
        self._apply_seeks()

    def _apply_seeks(self) -> None:
        for partition, offset in list(self._pending_seeks.items()):
            try:
                self.consumer.seek(KafkaTopicPartition(*partition, offset))
            except KafkaException as error:
                # Right after an assignment librdkafka refuses seeks (_STATE) until the partition's
                # fetcher has started; the next poll tries again and drops what it read meanwhile.
                if error.args[0].code() != KafkaError._STATE:
                    raise
                continue
            del self._pending_seeks[partition]

    def committed(self, partition: TopicPartition) -> Position | None:
        (committed,) = self.consumer.committed([KafkaTopicPartition(*partition)], timeout=self._timeout)
        if committed.error is not None:
            raise KafkaException(committed.error)
        return None if committed.offset < 0 else (committed.offset, committed.metadata or "")

    def beginning_offset(self, partition: TopicPartition) -> int:
        low, _ = self.consumer.get_watermark_offsets(KafkaTopicPartition(*partition), timeout=self._timeout)
        return low

    def end_offset(self, partition: TopicPartition) -> int:
        # The high watermark: librdkafka does not give the last stable offset. Only an owner
        # writes an internal partition, and its earlier transactions were aborted when its
        # producer started (fenced), so none is open below the high watermark when it asks.
        _, high = self.consumer.get_watermark_offsets(KafkaTopicPartition(*partition), timeout=self._timeout)
        return high

    def lag(self) -> dict[TopicPartition, int]:
        result = {}
        assigned = self.consumer.assignment()
        for position in self.consumer.position(assigned) if assigned else []:
            _, high = self.consumer.get_watermark_offsets(position, cached=True)
            if high >= 0 and position.offset >= 0:
                result[(position.topic, position.partition)] = max(0, high - position.offset)
        return result

    def read_range(
        self, partition: TopicPartition, start: int, end: int, stall_timeout: float = 120.0
    ) -> Iterator[Message]:
        if end <= start:
            return
        reader = Consumer({
            **self._options,
            "group.id": f"read-range-{uuid.uuid4().hex}",  # required by librdkafka; nothing is committed
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
            "error_cb": _log_client_error,
        })  # fmt: skip
        tp = KafkaTopicPartition(*partition, start)
        try:
            reader.assign([tp])
            first = True
            stalled = 0.0
            # The position, not the last record, tells when ``end`` is passed: with read_committed
            # the last offsets may be transaction markers, which are never delivered.
            while reader.position([tp])[0].offset < end:
                if stalled > stall_timeout:
                    raise TimeoutError(
                        f"could not read {partition} offsets {start}..{end}: "
                        f"nothing came for {stall_timeout:.0f} s"
                    )
                began = time.monotonic()
                records = reader.consume(500, 0.5)
                stalled = 0.0 if records else stalled + time.monotonic() - began
                for record in records:
                    if record.error() is not None:
                        if _is_fatal(record.error()):
                            raise KafkaException(record.error())
                        continue
                    if record.offset() >= end:
                        return
                    message = Message(*partition, record.offset(), record.key(), record.value())
                    if first:
                        warn_about_gap(partition, start, message)
                        first = False
                    yield message
        finally:
            reader.close()

    def commit(self, positions: dict[TopicPartition, Position]) -> None:
        self.consumer.commit(offsets=_kafka_offsets(positions), asynchronous=False)

    def group_metadata(self) -> object:
        return self.consumer.consumer_group_metadata()

    def close(self) -> None:
        self.consumer.close()


def _partitions(partitions: list[KafkaTopicPartition]) -> list[TopicPartition]:
    return [(tp.topic, tp.partition) for tp in partitions]


def _kafka_offsets(positions: dict[TopicPartition, Position]) -> list[KafkaTopicPartition]:
    return [KafkaTopicPartition(*tp, offset, metadata) for tp, (offset, metadata) in positions.items()]


class ConfluentSink(Sink):
    def __init__(self, transactional_id: str | None, bootstrap: str, settings: ClientSettings) -> None:
        self.transactional = transactional_id is not None
        self._timeout = settings.request_timeout
        self._failures: list[KafkaError] = []  # delivery failures since the last flush
        options: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "message.max.bytes": MAX_MESSAGE_BYTES,
            "acks": "all",
            "enable.idempotence": True,
            # Only failed deliveries call back: one Python call per failure, not per record.
            "delivery.report.only.error": True,
            "on_delivery": lambda error, _: self._failures.append(error),
            "error_cb": _log_client_error,
            **settings.producer_options,
        }
        if transactional_id is not None:
            options["transactional.id"] = transactional_id
            options["transaction.timeout.ms"] = int(settings.transaction_timeout * 1000)
        self.producer = Producer(options)
        if self.transactional:
            # Fences any older producer with this id and aborts its open transaction.
            self.producer.init_transactions(self._timeout)

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list | None = None,
        partition: int | None = None,
    ) -> None:
        where = {} if partition is None else {"partition": partition}
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers, **where)
                return
            except BufferError:  # librdkafka's queue is full: let it send, then try again
                self.producer.poll(0.05)

    def begin(self) -> None:
        if self.transactional:
            self.producer.begin_transaction()

    def commit(self, positions: dict[TopicPartition, Position], group_metadata: object) -> None:
        if not self.transactional:
            self.flush()
            return
        if positions:
            self.producer.send_offsets_to_transaction(
                _kafka_offsets(positions), group_metadata, self._timeout
            )
        self.producer.commit_transaction(self._timeout)  # raises if any send in it failed

    def abort(self) -> None:
        if self.transactional:
            self.producer.abort_transaction(self._timeout)

    def flush(self) -> None:
        """Wait for every send; raise the first delivery failure."""
        remaining = self.producer.flush(self._timeout)
        failures, self._failures = self._failures, []
        if failures:
            raise KafkaException(failures[0])
        if remaining:
            raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, f"{remaining} records not delivered"))

    def close(self) -> None:
        if not self.transactional:
            self.producer.flush(5)
        # A transactional producer is dropped as it is: the next one with its id aborts what is open.


class ConfluentConnector(Connector):
    """Sources and sinks on confluent-kafka, with the config's client options (librdkafka names)."""

    source_class = ConfluentSource
    sink_class = ConfluentSink
    client_errors = (KafkaException, TimeoutError)

    def _admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap_servers, **self.settings.common})

    def partition_count(self, topic: str) -> int | None:
        # All topics: a metadata request naming the topic could create it (producer-type handle).
        metadata = self._admin().list_topics(timeout=self.settings.request_timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:  # UNKNOWN_TOPIC_OR_PART, most likely
            return None
        return len(metadata.partitions) or None

    def max_message_bytes(self, topics: list[str]) -> dict[str, int]:
        admin = self._admin()  # kept until the futures are done: dropping it cancels them
        futures = admin.describe_configs([ConfigResource("topic", topic) for topic in topics])
        timeout = self.settings.request_timeout
        return {
            resource.name: int(future.result(timeout)["max.message.bytes"].value)
            for resource, future in futures.items()
        }

    def ensure_topics(
        self, topics: list[str], partitions: int = 1, configs: dict[str, str] | None = None
    ) -> None:
        admin = self._admin()
        timeout = self.settings.request_timeout
        existing = set(admin.list_topics(timeout=timeout).topics)
        missing = [
            NewTopic(t, partitions, replication_factor=1, config=configs or {})
            for t in set(topics) - existing
        ]
        for topic, future in admin.create_topics(missing).items() if missing else []:
            try:
                future.result(timeout)
            except KafkaException as error:
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                logger.debug("topic %s already exists", topic)
