"""The connector interface the service runs on; a Kafka client library implements it.

kafka-python implements it in :mod:`connectors.kafka`. A second backend (confluent-kafka) would
implement the same three classes; the service does not import any client library itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

TopicPartition = tuple[str, int]
# A committed position: the next offset, and metadata (the service stores its checkpoint's snapshot id).
Position = tuple[int, str]


@dataclass(frozen=True, slots=True)
class Message:
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = -1  # when it was produced (CreateTime), -1 if unknown


class Source(ABC):
    """A consumer-group member with manual offsets.

    ``on_assign`` and ``on_revoke`` are called when the group rebalances, possibly on the client's
    own I/O thread: they must only take note (no blocking calls); the caller acts after ``poll``.
    """

    on_assign: Callable[[list[TopicPartition]], None]
    on_revoke: Callable[[list[TopicPartition]], None]

    @abstractmethod
    def poll(self, timeout: float, max_records: int) -> list[Message]: ...

    @abstractmethod
    def assignment(self) -> set[TopicPartition]: ...

    @abstractmethod
    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    @abstractmethod
    def committed(self, partition: TopicPartition) -> Position | None: ...

    @abstractmethod
    def beginning_offset(self, partition: TopicPartition) -> int: ...

    @abstractmethod
    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the end of each assigned partition (as last seen by the client)."""

    @abstractmethod
    def read_range(
        self, partition: TopicPartition, start: int, end: int, timeout: float = 120.0
    ) -> list[Message]:
        """Records with ``start <= offset < end`` of one partition, read outside the group (to
        re-learn); raises ``TimeoutError`` if they cannot be read in time."""

    @abstractmethod
    def commit(self, positions: dict[TopicPartition, Position]) -> None:
        """Commit positions directly (at-least-once); exactly-once commits through the sink."""

    @abstractmethod
    def pause(self, partitions: list[TopicPartition]) -> None: ...

    @abstractmethod
    def resume(self, partitions: list[TopicPartition]) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class Sink(ABC):
    """A producer of predictions and dead letters, transactional in exactly-once mode."""

    transactional: bool

    @abstractmethod
    def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: list | None = None
    ) -> None: ...

    @abstractmethod
    def begin(self) -> None:
        """Open a transaction (no-op when not transactional)."""

    @abstractmethod
    def commit(self, positions: dict[TopicPartition, Position], source: Source) -> None:
        """Make everything sent since ``begin`` visible; with a transaction, commit ``positions`` in it."""

    @abstractmethod
    def abort(self) -> None: ...

    @abstractmethod
    def flush(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class Connector(ABC):
    """Builds sources and sinks for one client library, and publishes plain records (the CLI)."""

    @abstractmethod
    def source(self, topics: list[str], group_id: str, instance_id: str) -> Source: ...

    @abstractmethod
    def sink(self, transactional_id: str | None) -> Sink: ...

    @abstractmethod
    def ensure_topics(self, topics: list[str], partitions: int = 1) -> None: ...
