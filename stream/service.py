"""The long-lived service: consume events, predict, publish, learn, checkpoint.

Data flow per event: source (Kafka) -> decode/validate (:mod:`stream.events`) -> predict ->
publish (sink) -> learn (:mod:`stream.prequential`) -> drift policy (:mod:`stream.drift`);
then, every N events or T seconds, checkpoint (:mod:`stream.checkpoint`).

Model scope: one model per input partition. Each partition's state lives in its own snapshot
directory (``<snapshots.directory>/<topic>-<partition>``), so whichever instance of the group owns
a partition restores exactly that partition's model, and instances never share a model.

Guarantees (``service.guarantee``):

- ``exactly_once``: predictions and dead letters are sent in a Kafka transaction; at a
  checkpoint each partition's snapshot is made durable, then the consumer offsets are committed
  in that same transaction. A ``read_committed`` reader sees each event's prediction once, and
  after any crash the restored model equals that of an uninterrupted run.
- ``at_least_once``: predictions are sent as they are made and offsets committed after the
  snapshot; after a crash, predictions since the last checkpoint are sent again, but the model
  is restored from the checkpoint, so it never learns an event twice.

On SIGTERM/SIGINT the current batch finishes, a ``shutdown`` snapshot is taken, everything is
committed and the process exits 0. A lost broker is logged and retried with backoff; the service
rebuilds its clients and state from the last checkpoint, losing nothing.
"""

from __future__ import annotations

import logging
import queue
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from connectors.base import Connector, Message, Position, Sink, Source, TopicPartition
from stream.checkpoint import partition_key, restore_point, snapshot_scope
from stream.config import Config
from stream.dead_letters import dead_letter
from stream.events import InvalidEvent, decode_event, encode_record
from stream.prequential import Engine
from stream.snapshots import SnapshotError, SnapshotManifest, SnapshotStore
from stream.telemetry import Telemetry

logger = logging.getLogger(__name__)

STATUS_REFRESH_SECONDS = 1.0
THROUGHPUT_SAMPLES = 600


@dataclass
class _Partition:
    """A partition this instance owns: its engine and where it stands."""

    topic: str
    partition: int
    engine: Engine
    key: str
    scope: str
    checkpoint_id: str = ""  # the snapshot commits name: restore from it, then re-learn up to the commit
    processed_since_checkpoint: int = 0
    uncommitted: int = 0

    @property
    def next_offset(self) -> int:
        return self.engine.state.offsets[self.key]


@dataclass
class _Counters:
    predictions: int = 0
    dead_letters: int = 0
    relearned: int = 0
    commits: int = 0
    checkpoints: int = 0
    recoveries: int = 0


def default_instance_id() -> str:
    return socket.gethostname().replace(".", "-") or "stream"


class Service:
    """Runs the poll -> engine -> publish loop for one instance of the consumer group."""

    def __init__(self, config: Config, connector: Connector, instance_id: str | None = None) -> None:
        self.config = config
        self.connector = connector
        self.instance_id = instance_id or config.service.instance_id or default_instance_id()
        self.task = config.model.task
        self.partitions: dict[TopicPartition, _Partition] = {}
        self.counters = _Counters()
        self.source: Source | None = None
        self.sink: Sink | None = None
        self._stopping = False
        self._last_checkpoint = self._last_commit = time.monotonic()
        self._last_status = time.monotonic()
        self._status_events = 0
        self._rebalances: queue.SimpleQueue[tuple[str, list[TopicPartition]]] = queue.SimpleQueue()
        self._commands: queue.SimpleQueue[tuple[Callable[[Service], Any], Future[Any]]] = queue.SimpleQueue()
        self._last_refresh = 0.0
        self.alive_at = time.monotonic()  # the service thread's last round of its loop or retry wait
        self._produced_ms = -1
        self.telemetry = Telemetry()
        self.telemetry.watch(lambda: self.latest_status)
        self.throughput: deque[dict[str, float]] = deque(maxlen=THROUGHPUT_SAMPLES)
        # What other threads read: replaced whole, never mutated, by the service thread.
        self.latest_status: dict[str, Any] = {"ready": False, "partitions": {}}

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        """Finish the current batch, take a shutdown snapshot, commit and return from ``run``."""
        if not self._stopping:
            logger.info("stop requested: finishing the current batch")
        self._stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> int:
        kafka = self.config.kafka
        logger.info(
            "starting instance=%s group=%s input=%s guarantee=%s",
            self.instance_id, kafka.group_id, kafka.input_topic, self.config.service.guarantee,
        )  # fmt: skip
        self.connector.ensure_topics([kafka.predictions_topic, kafka.dead_letter_topic])
        backoff = 1.0
        while not self._stopping:
            try:
                self._connect()
                backoff = 1.0
                self._loop()
                self._checkpoint("shutdown")
                self._close()
                break
            except Exception:
                logger.exception("lost the broker or a client failed; recovering from the last checkpoint")
                self._close()
                self.counters.recoveries += 1
                self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        logger.info("stopped after %d predictions", self.counters.predictions)
        return 0

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            self.alive_at = time.monotonic()
            time.sleep(0.1)

    def _connect(self) -> None:
        kafka = self.config.kafka
        exactly_once = self.config.service.guarantee == "exactly_once"
        self.partitions = {}
        self.sink = self.connector.sink(f"{kafka.group_id}-{self.instance_id}" if exactly_once else None)
        self.sink.begin()
        self.source = self.connector.source([kafka.input_topic], kafka.group_id, self.instance_id)
        # Called on the client's I/O thread: only take note; _apply_rebalances acts on it.
        self.source.on_assign = lambda partitions: self._rebalances.put(("assign", partitions))
        self.source.on_revoke = lambda partitions: self._rebalances.put(("revoke", partitions))

    def _close(self) -> None:
        for client in (self.source, self.sink):
            if client is not None:
                try:
                    client.close()
                except Exception as error:  # closing a client of a dead broker may fail too
                    logger.debug("closing %s: %s", type(client).__name__, error)
        self.source = self.sink = None
        self.partitions = {}
        self.latest_status = {**self.latest_status, "ready": False, "connected": False}

    def _loop(self) -> None:
        assert self.source is not None
        service = self.config.service
        while not self._stopping:
            self.alive_at = time.monotonic()
            messages = self.source.poll(timeout=0.2, max_records=500)
            if self._apply_rebalances():
                continue  # every owned partition was re-positioned: the batch will be fetched again
            for message in messages:
                self._handle(message)
            self._run_commands()
            now = time.monotonic()
            pending = sum(p.processed_since_checkpoint for p in self.partitions.values())
            if pending >= service.checkpoint_every_events or (
                pending and now - self._last_checkpoint >= service.checkpoint_every_seconds
            ):
                self._checkpoint("checkpoint")
            elif now - self._last_commit >= service.commit_every_seconds and any(
                p.uncommitted for p in self.partitions.values()
            ):
                self._commit()
            if now - self._last_status >= service.status_every_seconds:
                self._report_status(now)
            if now - self._last_refresh >= STATUS_REFRESH_SECONDS:
                self._refresh_status(now)

    # -- per event -------------------------------------------------------------------------

    def _handle(self, message: Message, publish: bool = True) -> None:
        """Decode, predict, publish, learn one message; a bad one becomes a dead letter."""
        owned = self.partitions.get((message.topic, message.partition))
        if owned is None:  # revoked while the batch was in flight
            return
        engine = owned.engine
        value = message.value
        # Advanced first: a snapshot taken while learning this event (warning, drift) must record
        # that the event is learned, or a restore from it would learn the event twice.
        engine.state.offsets[owned.key] = message.offset + 1
        try:
            if value is None:
                raise InvalidEvent("empty message (no value)")
            if len(value) > self.config.service.max_event_bytes:
                raise InvalidEvent(
                    f"event of {len(value)} bytes exceeds service.max_event_bytes="
                    f"{self.config.service.max_event_bytes}"
                )
            event = decode_event(value, self.task)
            if event.id is None:
                event.id = f"{message.topic}-{message.partition}-{message.offset}"
            self._produced_ms = message.timestamp_ms
            engine.process(event, self._publish_prediction if publish else None)
        except InvalidEvent as error:
            engine.record_error()
            if publish:
                self._publish_dead_letter(message, str(error))
        owned.processed_since_checkpoint += 1
        owned.uncommitted += 1

    def _publish_prediction(self, prediction: dict[str, Any]) -> None:
        assert self.sink is not None
        self.sink.send(self.config.kafka.predictions_topic, encode_record(prediction))
        self.counters.predictions += 1
        if self._produced_ms >= 0:
            self.telemetry.latency.observe(max(0.0, time.time() - self._produced_ms / 1000))

    def _publish_dead_letter(self, message: Message, reason: str) -> None:
        assert self.sink is not None
        source = {"topic": message.topic, "partition": message.partition, "offset": message.offset}
        record = dead_letter(reason, message.value, source, self.config.service.max_event_bytes)
        self.sink.send(
            self.config.kafka.dead_letter_topic,
            encode_record(record),
            key=message.key,
            headers=[("error", reason[:500].encode())],
        )
        self.counters.dead_letters += 1
        logger.warning("dead letter %s:%d@%d: %s", message.topic, message.partition, message.offset, reason)

    # -- partitions come and go ------------------------------------------------------------

    def _apply_rebalances(self) -> bool:
        """Act on the assignments and revocations noted since the last poll; True if any.

        A revocation aborts the open transaction (its predictions may cover events the new owner
        will process) and rebuilds every owned partition from its last checkpoint, exactly as a
        restart would. Then every owned partition is positioned at its next event.
        """
        assert self.source is not None and self.sink is not None
        changes = []
        while not self._rebalances.empty():
            changes.append(self._rebalances.get())
        if not changes:
            return False
        if any(kind == "revoke" and partitions for kind, partitions in changes):
            if self.sink.transactional:
                self.sink.abort()
                self.sink.begin()
            self.partitions = {}
        assignment = self.source.assignment()
        for tp in list(self.partitions):
            if tp not in assignment:
                del self.partitions[tp]
        for topic, partition in sorted(assignment):
            if (topic, partition) not in self.partitions:
                self._restore(topic, partition)
        for tp, owned in self.partitions.items():
            self.source.seek(tp, owned.next_offset)
        logger.info("assignment: %s", sorted(owned.key for owned in self.partitions.values()))
        return True

    def _restore(self, topic: str, partition: int) -> _Partition:
        """The partition's state at its committed offset: snapshot, then silent re-learning."""
        assert self.source is not None
        tp = (topic, partition)
        key = partition_key(topic, partition)
        position = self.source.committed(tp)
        committed, checkpoint_id = position if position else (self.source.beginning_offset(tp), "")
        scope = snapshot_scope(topic, partition)
        store = SnapshotStore.from_config(self.config.snapshots, scope)
        restored = restore_point(store, key, committed, checkpoint_id)
        if restored is None:
            engine = Engine(self.config, store)
            start = self.source.beginning_offset(tp)
            origin = "a new model"
        else:
            manifest, state = restored
            engine = Engine(self.config, store, state)
            start = manifest.offsets[key]
            origin = f"snapshot {manifest.id}"
        engine.state.offsets[key] = start
        owned = _Partition(topic, partition, engine, key, scope, restored[0].id if restored else "")
        self.partitions[tp] = owned
        messages = self.source.read_range(tp, start, committed)
        for message in messages:
            self._handle(message, publish=False)
        owned.processed_since_checkpoint = owned.uncommitted = 0
        engine.state.offsets[key] = max(engine.state.offsets[key], committed)
        self.counters.relearned += len(messages)
        logger.info(
            "restored %s from %s at offset %d; re-learned %d events up to the committed offset %d",
            key, origin, start, len(messages), committed,
        )  # fmt: skip
        return owned

    # -- checkpoints -----------------------------------------------------------------------

    def _checkpoint(self, reason: str) -> None:
        """Snapshot every partition that learned since the last one (durably), then commit."""
        if self.sink is None or self.source is None:
            return
        snapshotted = set()
        for tp, owned in self.partitions.items():
            if owned.processed_since_checkpoint or reason == "shutdown":
                owned.checkpoint_id = owned.engine.snapshot(reason).id  # type: ignore[arg-type]
                owned.processed_since_checkpoint = 0
                snapshotted.add(tp)
        self._last_checkpoint = time.monotonic()
        self.counters.checkpoints += 1
        self._commit(snapshotted)

    def _commit(self, snapshotted: Collection[TopicPartition] = ()) -> None:
        """Make the predictions so far visible and commit each partition's next offset.

        A commit names the partition's last checkpoint snapshot, at or before the committed
        offset: a restore loads it and re-learns the events in between without publishing. So
        commits (cheap, every ``commit_every_seconds``) need no snapshot of their own; snapshots
        (every ``checkpoint_every_*``) bound how much is re-learned. A partition with a new
        snapshot is always committed, so that a rollback, which no event reproduces, sticks.
        """
        assert self.sink is not None and self.source is not None
        positions: dict[TopicPartition, Position] = {
            tp: (owned.next_offset, owned.checkpoint_id)
            for tp, owned in self.partitions.items()
            if owned.uncommitted or tp in snapshotted
        }
        if self.sink.transactional:
            self.sink.commit(positions, self.source)
            self.sink.begin()
        else:
            self.sink.flush()
            if positions:
                self.source.commit(positions)
        for owned in self.partitions.values():
            owned.uncommitted = 0
        self._last_commit = time.monotonic()
        self.counters.commits += 1

    # -- commands from other threads (the HTTP API) ----------------------------------------

    def submit(self, command: Callable[[Service], Any], timeout: float = 30.0) -> Any:
        """Run ``command(service)`` on the service's own thread between batches; return its result.

        The engines are not thread-safe: every change the API makes goes through here.
        """
        future: Future[Any] = Future()
        self._commands.put((command, future))
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.cancel():  # not started: it never will be
                raise
            return future.result()  # already running: its effect will happen, so wait for it

    def _run_commands(self) -> None:
        while not self._commands.empty():
            command, future = self._commands.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(command(self))
            except (KeyError, SnapshotError) as error:  # the request's fault: the caller is told
                future.set_exception(error)
            except Exception as error:  # Kafka or disk: tell the caller, then recover as always
                future.set_exception(error)
                raise

    def owned(self, scope: str) -> _Partition:
        """The owned partition whose snapshot scope is ``scope`` (``topic-partition``)."""
        for owned in self.partitions.values():
            if owned.scope == scope:
                return owned
        raise KeyError(f"this instance does not own {scope!r}; it owns {sorted(self.scopes())}")

    def scopes(self) -> list[str]:
        return sorted(owned.scope for owned in self.partitions.values())

    def rollback(self, scope: str, snapshot_id: str) -> SnapshotManifest:
        """Switch a partition's model to a snapshot's, and commit that at once (service thread)."""
        owned = self.owned(scope)
        manifest = owned.engine.rollback(snapshot_id)
        owned.processed_since_checkpoint += 1  # the rollback must be part of the next commit
        self._checkpoint("checkpoint")
        logger.info("rolled %s back to %s", owned.key, snapshot_id)
        return manifest

    def take_snapshot(self, scope: str) -> SnapshotManifest:
        """A manual snapshot of a partition's current state (service thread)."""
        return self.owned(scope).engine.snapshot("manual")

    def pin(self, scope: str, snapshot_id: str, pinned: bool = True) -> SnapshotManifest:
        return self.owned(scope).engine.store.pin(snapshot_id, pinned)

    # -- reporting -------------------------------------------------------------------------

    def _refresh_status(self, now: float) -> None:
        """Rebuild ``latest_status`` (what the API and metrics read) on the service thread."""
        previous = self.throughput[-1] if self.throughput else None
        elapsed = now - previous["monotonic"] if previous else 0.0
        rate = (
            (self.counters.predictions - previous["predictions"]) / elapsed if previous and elapsed else 0.0
        )
        lag = self.source.lag() if self.source is not None else {}
        partitions = {}
        for tp, owned in self.partitions.items():
            partitions[owned.scope] = {
                **owned.engine.summary(),
                "offset": owned.next_offset,
                "lag": lag.get(tp, 0),
                "rolling_metric": owned.engine.state.metrics.primary_rolling[0],
            }
        self.throughput.append({
            "monotonic": now, "time": time.time(), "predictions": self.counters.predictions,
            "events_per_second": rate, "lag": sum(lag.values()),
        })  # fmt: skip
        self.latest_status = {
            "ready": self.source is not None and bool(self.partitions),
            "connected": self.source is not None,
            "instance_id": self.instance_id,
            "guarantee": self.config.service.guarantee,
            "predictions": self.counters.predictions,
            "dead_letters": self.counters.dead_letters,
            "relearned": self.counters.relearned,
            "commits": self.counters.commits,
            "checkpoints": self.counters.checkpoints,
            "recoveries": self.counters.recoveries,
            "events_per_second": rate,
            "lag": sum(lag.values()),
            "partitions": partitions,
            "throughput": [
                {k: v for k, v in sample.items() if k != "monotonic"} for sample in self.throughput
            ],
        }
        self._last_refresh = now

    def _report_status(self, now: float) -> None:
        elapsed = now - self._last_status
        rate = (self.counters.predictions - self._status_events) / elapsed if elapsed else 0.0
        lag = sum(self.source.lag().values()) if self.source is not None else 0
        parts = [f"events/s={rate:.0f}", f"lag={lag}", f"predictions={self.counters.predictions}"]
        for owned in self.partitions.values():
            state = owned.engine.state
            name, value = state.metrics.primary_rolling
            parts.append(
                f"{owned.key}: {name.split(' ')[0]}={value:.3f} drifts={state.drifts} "
                f"snapshots={state.snapshots} rollbacks={state.rollbacks}"
            )
        logger.info("status %s", " ".join(parts))
        self._last_status = now
        self._status_events = self.counters.predictions
