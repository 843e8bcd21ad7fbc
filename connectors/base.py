"""The connector interface the service runs on; a Kafka client library implements it.

kafka-python implements it in :mod:`connectors.kafka`, confluent-kafka in
:mod:`connectors.confluent`; the service does not import any client library itself.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
# A committed position: the next offset, and metadata (the service stores its checkpoint's snapshot id).
Position = tuple[int, str]


class Message(NamedTuple):
    """One consumed record. The garbage collector tracks it for as long as it lives (CPython never
    stops tracking an instance of a tuple subclass), so the engine's journal keeps it as a plain
    tuple (:mod:`stream.journal`)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = -1  # when it was produced (CreateTime), -1 if unknown


@dataclass(frozen=True)
class ClientSettings:
    """How a backend builds its clients: options in its library's spelling, and time bounds.

    ``common`` goes to every client (security settings), ``consumer`` and ``producer`` only to
    those: each library refuses, or misapplies, an option meant for the other kind of client.

    >>> ClientSettings(common={"security_protocol": "SSL"}, consumer={"fetch_min_bytes": 1}).consumer_options
    {'security_protocol': 'SSL', 'fetch_min_bytes': 1}
    """

    common: dict[str, Any] = field(default_factory=dict)
    consumer: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)
    request_timeout: float = 10.0  # seconds any blocking client call may take before it raises
    transaction_timeout: float = 10.0  # seconds before the broker aborts a dead producer's transaction

    @property
    def consumer_options(self) -> dict[str, Any]:
        return {**self.common, **self.consumer}

    @property
    def producer_options(self) -> dict[str, Any]:
        return {**self.common, **self.producer}


class Source(ABC):
    """A consumer-group member with manual offsets.

    ``on_assign`` and ``on_revoke`` are called when the group rebalances, possibly on the client's
    own I/O thread: they must only take note (no blocking calls); the caller acts after ``poll``.
    """

    on_assign: Callable[[list[TopicPartition]], None]
    on_revoke: Callable[[list[TopicPartition]], None]

    @abstractmethod
    def __init__(
        self, topics: list[str], group_id: str, instance_id: str, bootstrap: str, settings: ClientSettings
    ) -> None:
        """Join ``group_id`` as the static member ``instance_id`` and subscribe to ``topics``; with no
        topics, a reader of ranges and offsets only (it joins no group)."""

    @abstractmethod
    def poll(self, timeout: float, max_records: int) -> list[Message]:
        """The next records; raises when the client can no longer be used (fenced, fatal error)."""

    @abstractmethod
    def keep_alive(self) -> None:
        """Show the group this member is alive without consuming (while it re-learns, say): a
        poll with every partition paused. Whatever was fetched and not returned is dropped, so the
        caller seeks every partition before it polls again."""

    @abstractmethod
    def assignment(self) -> set[TopicPartition]: ...

    @abstractmethod
    def pause(self, partitions: list[TopicPartition]) -> None:
        """Fetch no more of these partitions until :meth:`resume` (what was returned is the caller's)."""

    @abstractmethod
    def resume(self, partitions: list[TopicPartition]) -> None: ...

    @abstractmethod
    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    @abstractmethod
    def committed(self, partition: TopicPartition) -> Position | None: ...

    @abstractmethod
    def beginning_offset(self, partition: TopicPartition) -> int: ...

    @abstractmethod
    def end_offset(self, partition: TopicPartition) -> int:
        """The offset after the last record of any partition (assigned or not) that a reader can
        read: every record before it is in a finished transaction (or none)."""

    @abstractmethod
    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the end of each assigned partition (as last seen by the client)."""

    @abstractmethod
    def read_range(
        self, partition: TopicPartition, start: int, end: int, stall_timeout: float = 120.0
    ) -> Iterator[Message]:
        """Records with ``start <= offset < end`` of one partition, read outside the group (to
        re-learn), as they are fetched; raises ``TimeoutError`` when no record comes for
        ``stall_timeout`` seconds of reading (time the caller spends between records not counted)."""

    @abstractmethod
    def commit(self, positions: dict[TopicPartition, Position]) -> None:
        """Commit positions directly (at-least-once); exactly-once commits through the sink."""

    @abstractmethod
    def group_metadata(self) -> object:
        """The consumer's group metadata (opaque), which a transactional commit of offsets needs
        so that the broker fences a zombie member of an older generation."""

    @abstractmethod
    def close(self) -> None: ...


class Sink(ABC):
    """A producer of predictions and dead letters, transactional in exactly-once mode."""

    transactional: bool

    @abstractmethod
    def __init__(self, transactional_id: str | None, bootstrap: str, settings: ClientSettings) -> None:
        """A transactional producer with ``transactional_id`` (fencing older ones), or a plain one."""

    @abstractmethod
    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list | None = None,
        partition: int | None = None,
    ) -> None:
        """Send a record (``value`` None: a tombstone) to ``partition``, or the key's partition."""

    @abstractmethod
    def begin(self) -> None:
        """Open a transaction (no-op when not transactional)."""

    @abstractmethod
    def commit(self, positions: dict[TopicPartition, Position], group_metadata: object) -> None:
        """Make everything sent since ``begin`` visible; with a transaction, commit ``positions`` in it
        for the group ``group_metadata`` names (:meth:`Source.group_metadata`)."""

    @abstractmethod
    def abort(self) -> None: ...

    @abstractmethod
    def flush(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class Connector(ABC):
    """Builds sources and sinks for one client library, and manages topics.

    Sources are built as ``source_class(topics, group_id, instance_id, bootstrap, settings)`` and
    sinks as ``sink_class(transactional_id, bootstrap, settings)``.
    """

    source_class: type[Source]
    sink_class: type[Sink]
    # What the backend's clients raise when the broker or the client fails (not a bug of ours).
    client_errors: tuple[type[Exception], ...] = ()

    def __init__(self, bootstrap_servers: str, settings: ClientSettings | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.settings = settings or ClientSettings()

    def source(self, topics: list[str], group_id: str, instance_id: str) -> Source:
        return self.source_class(topics, group_id, instance_id, self.bootstrap_servers, self.settings)

    def sink(self, transactional_id: str | None) -> Sink:
        return self.sink_class(transactional_id, self.bootstrap_servers, self.settings)

    @abstractmethod
    def ensure_topics(
        self, topics: list[str], partitions: int = 1, configs: dict[str, str] | None = None
    ) -> None:
        """Create those of ``topics`` that do not exist yet, with ``configs`` (say, compaction)."""

    @abstractmethod
    def partition_count(self, topic: str) -> int | None:
        """How many partitions ``topic`` has; None if it does not exist."""

    @abstractmethod
    def max_message_bytes(self, topics: list[str]) -> dict[str, int]:
        """Each topic's ``max.message.bytes``: the largest record the broker takes on it."""


def warn_about_gap(partition: TopicPartition, start: int, first: Message) -> None:
    """``read_range`` found its first offsets deleted (topic retention): say what is re-learned."""
    if first.offset > start:
        logger.warning(
            "%s: offsets %d..%d are gone (topic retention); re-learning from %d",
            partition, start, first.offset, first.offset,
        )  # fmt: skip
