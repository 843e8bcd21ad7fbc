"""The connector interface the service runs on; a Kafka client library implements it.

kafka-python implements it in :mod:`connectors.kafka`, confluent-kafka in
:mod:`connectors.confluent`; the service does not import any client library itself.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
# A committed position: the next offset, and metadata (the service stores its checkpoint's snapshot id).
Position = tuple[int, str]


@dataclass(slots=True)  # not frozen: a frozen dataclass takes twice as long to build, once per record
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
    def __init__(self, topics: list[str], group_id: str, instance_id: str, options: dict[str, Any]) -> None:
        """Join ``group_id`` as the static member ``instance_id`` and subscribe to ``topics``."""

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
    def group_metadata(self) -> object:
        """The consumer's group metadata (opaque), which a transactional commit of offsets needs
        so that the broker fences a zombie member of an older generation."""

    @abstractmethod
    def close(self) -> None: ...


class Sink(ABC):
    """A producer of predictions and dead letters, transactional in exactly-once mode."""

    transactional: bool

    @abstractmethod
    def __init__(self, transactional_id: str | None, options: dict[str, Any]) -> None:
        """A transactional producer with ``transactional_id`` (fencing older ones), or a plain one."""

    @abstractmethod
    def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: list | None = None
    ) -> None: ...

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
    """Builds sources and sinks for one client library, and creates topics.

    A backend names its classes and how its library spells the bootstrap setting; sources are
    built as ``source_class(topics, group_id, instance_id, options)`` and sinks as
    ``sink_class(transactional_id, options)``, with the config's client options.
    """

    source_class: type[Source]
    sink_class: type[Sink]
    bootstrap_option: str

    def __init__(self, bootstrap_servers: str, client_options: dict[str, Any] | None = None) -> None:
        self.options = {self.bootstrap_option: bootstrap_servers, **(client_options or {})}

    def source(self, topics: list[str], group_id: str, instance_id: str) -> Source:
        return self.source_class(topics, group_id, instance_id, self.options)

    def sink(self, transactional_id: str | None) -> Sink:
        return self.sink_class(transactional_id, self.options)

    @abstractmethod
    def ensure_topics(self, topics: list[str], partitions: int = 1) -> None: ...


def warn_about_gap(partition: TopicPartition, start: int, messages: list[Message]) -> None:
    """``read_range`` found its first offsets deleted (topic retention): say what is re-learned."""
    if messages and messages[0].offset > start:
        logger.warning(
            "%s: offsets %d..%d are gone (topic retention); re-learning from %d",
            partition, start, messages[0].offset, messages[0].offset,
        )  # fmt: skip
