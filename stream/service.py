"""The long-lived service: the loop that drives one instance of the consumer group.

Data flow per record, each step in the module named after it: source (:mod:`connectors`) ->
decode/validate (:mod:`stream.events`, through :mod:`stream.step`) -> predict -> publish
(:mod:`stream.publish`) -> learn (:mod:`stream.prequential`) -> drift policy (:mod:`stream.drift`)
-> checkpoint and commit (:mod:`stream.checkpoint`, which holds the processing guarantee and
describes it).

Model scope: one model per input partition, with its own snapshot folder
(``<snapshots.directory>/<topic>-<partition>``), so whichever instance of the group owns a
partition restores exactly that partition's model.

:class:`Service` owns the loop, the threads and the commands the API sends: it polls, hands each
record to the step, lets the :class:`~stream.checkpoint.Checkpointer` checkpoint and commit,
and refreshes the status. On SIGTERM/SIGINT the current batch finishes, a ``shutdown`` snapshot
is taken, everything is committed and the process exits 0.

It waits for the input topic to exist (it never creates it). Any failure after that — a lost
broker, a client call that ran past ``kafka.request_timeout_seconds``, a snapshot the disk
refused — is logged as what it is and recovered from: the clients are rebuilt and every
partition is restored from its last commit, losing nothing. Recoveries back off (1 s doubling to
30 s) until the service makes progress again (a checkpoint, or twice the checkpoint period
without a failure); after ``service.unhealthy_after_failures`` of them in a row ``/health``
answers 503 with the reason, which ``/api/stats`` shows too.
"""

from __future__ import annotations

import logging
import queue
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from connectors.base import Connector, Message, TopicPartition
from stream.checkpoint import Checkpointer, OwnedPartition
from stream.config import Config
from stream.dead_letters import DeadLetterWatch
from stream.errors import ConfigError, NotOwnedError, SnapshotError, SnapshotFenced, SnapshotWriteError
from stream.publish import Publisher
from stream.snapshots import SnapshotManifest
from stream.status import Counters, PartitionStatus, StatusBoard
from stream.telemetry import Telemetry

logger = logging.getLogger(__name__)

STATUS_REFRESH_SECONDS = 1.0
POLL_SECONDS = 0.2
POLL_RECORDS = 500
MAX_BACKOFF_SECONDS = 30.0


class Service:
    """Runs the poll -> step -> checkpoint loop for one instance of the consumer group.

    ``instance_id`` must be this process's own (:class:`stream.instance.InstanceClaim`).
    """

    def __init__(self, config: Config, connector: Connector, instance_id: str) -> None:
        self.config = config
        self.connector = connector
        self.instance_id = instance_id
        self.counters = Counters()
        self.telemetry = Telemetry()
        self.status = StatusBoard(self.instance_id, config.service.guarantee)
        self.telemetry.watch(lambda: self.status.latest)
        self.checkpointer: Checkpointer | None = None  # with the clients, while connected
        self.alive_at = time.monotonic()  # the service thread's last round of its loop or retry wait
        self._stopping = False
        self._failures_in_a_row = 0  # recoveries since the service last made progress
        self.dead_letter_watch = DeadLetterWatch()
        self._last_status, self._last_refresh = time.monotonic(), 0.0
        self._rebalances: queue.SimpleQueue[bool] = queue.SimpleQueue()  # True: something was revoked
        self._commands: queue.SimpleQueue[tuple[Callable[[Service], Any], Future[Any]]] = queue.SimpleQueue()

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
            "starting instance=%s group=%s input=%s guarantee=%s client=%s",
            self.instance_id, kafka.group_id, kafka.input_topic, self.config.service.guarantee, kafka.library,
        )  # fmt: skip
        if not self._wait_for_input_topic():
            return 0
        self.connector.ensure_topics(kafka.output_topics)
        if kafka.label_topic is not None:
            self._prepare_label_topics()
        while not self._stopping:
            try:
                checkpointer, publisher = self._connect()
                self._loop(checkpointer, publisher)
                checkpointer.checkpoint("shutdown")
                self._close()
                break
            except Exception as error:
                self._close()
                self._recover_from(error)
        logger.info("stopped after %d predictions", self.counters.predictions)
        return 0

    def _wait_for_input_topic(self) -> bool:
        """Wait until the input topic exists, saying so; False if stopped first. It is never
        created here: an operator's later create, with the partitions they chose, would fail."""
        topic = self.config.kafka.input_topic
        waited = 0
        while not self._stopping:
            try:
                if self.connector.partition_count(topic):
                    return True
                reason = "it does not exist yet"
            except self.connector.client_errors as error:  # the broker is not there yet, most likely
                reason = f"{type(error).__name__}: {error}"
            if waited % 15 == 0:
                logger.warning("waiting for the input topic %r (%s; waited %d s)", topic, reason, waited * 2)
            waited += 1
            self._sleep(2.0)
        return False

    def _prepare_label_topics(self) -> None:
        """Delayed labels: the label topic must be co-partitioned with the input (same partition
        count; a producer keys labels as their events); the internal topics are made so."""
        kafka, connector = self.config.kafka, self.connector
        partitions = connector.partition_count(kafka.input_topic)
        labels = connector.partition_count(kafka.label_topic or "")
        if labels is None:
            raise ConfigError(f"kafka.label_topic: the topic {kafka.label_topic!r} does not exist; create it "
                              f"with the input's {partitions} partitions")  # fmt: skip
        if labels != partitions:
            raise ConfigError(
                f"kafka.label_topic: {kafka.label_topic!r} has {labels} partitions and the input "
                f"{kafka.input_topic!r} {partitions}: labels must be co-partitioned with their events "
                "(the same partition count, and keyed as their events)"
            )
        # Records of the internal topics hold an event's features: room for the largest event.
        room = str(2 * self.config.service.max_event_bytes + 1024 * 1024)
        connector.ensure_topics([kafka.examples_topic], partitions, {"max.message.bytes": room})
        connector.ensure_topics(
            [kafka.join_topic], partitions, {"cleanup.policy": "compact", "max.message.bytes": room}
        )
        for internal in (kafka.examples_topic, kafka.join_topic):
            # Another instance starting at the same time may have just created it: until its
            # metadata has spread, the topic has no partition count yet.
            count = connector.partition_count(internal)
            deadline = time.monotonic() + kafka.request_timeout_seconds
            while count is None and time.monotonic() < deadline:
                time.sleep(0.2)
                count = connector.partition_count(internal)
            if count != partitions:
                raise ConfigError(
                    f"kafka.label_topic: the internal topic {internal!r} has {count} partitions, "
                    f"not the input's {partitions}"
                )

    def _recover_from(self, error: Exception) -> None:
        """Say what failed, count it, and wait before the next attempt: longer each time the
        service fails again without having made progress."""
        self._failures_in_a_row += 1
        self.counters.recoveries += 1
        if isinstance(error, SnapshotFenced):
            what = f"fenced: {error}"
        elif isinstance(error, SnapshotWriteError):
            what = f"the snapshot store failed: {error}"
        elif isinstance(error, self.connector.client_errors):
            what = f"lost the broker or a Kafka client failed: {type(error).__name__}: {error}"
        else:
            what = f"unexpected error: {type(error).__name__}: {error}"
        backoff = min(2.0 ** (self._failures_in_a_row - 1), MAX_BACKOFF_SECONDS)
        logger.error(
            "%s; recovering from the last checkpoint in %.0f s (failure %d in a row)",
            what, backoff, self._failures_in_a_row,
            exc_info=not isinstance(error, (SnapshotWriteError, *self.connector.client_errors)),
        )  # fmt: skip
        self.status.failed(what, self._failures_in_a_row)
        self._sleep(backoff)

    def _made_progress(self) -> None:
        logger.info("recovered: making progress again after %d failures", self._failures_in_a_row)
        self._failures_in_a_row = 0
        self.status.failed(None, 0)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            self.alive_at = time.monotonic()
            time.sleep(0.1)

    def _connect(self) -> tuple[Checkpointer, Publisher]:
        kafka = self.config.kafka
        exactly_once = self.config.service.guarantee == "exactly_once"
        sink = self.connector.sink(f"{kafka.group_id}-{self.instance_id}" if exactly_once else None)
        outputs = [kafka.predictions_topic, kafka.dead_letter_topic]
        publisher = Publisher(
            self.config,
            sink,
            self.counters,
            self.telemetry.latency,
            self.connector.max_message_bytes(outputs),
            self.dead_letter_watch,
        )
        sink.begin()
        topics = [kafka.input_topic] if kafka.label_topic is None else [kafka.input_topic, kafka.label_topic]
        source = self.connector.source(topics, kafka.group_id, self.instance_id)
        # Called on the client's I/O thread: only take note; the loop acts on it after the poll.
        source.on_assign = lambda partitions: self._rebalances.put(False)
        source.on_revoke = lambda partitions: self._rebalances.put(bool(partitions))
        self.checkpointer = Checkpointer(
            self.config,
            source,
            sink,
            self.counters,
            publisher.dead_letter,
            self.telemetry.label_delay.observe,
            self.instance_id,
        )
        return self.checkpointer, publisher

    def _close(self) -> None:
        checkpointer, self.checkpointer = self.checkpointer, None
        if checkpointer is not None:
            for client in (checkpointer.source, checkpointer.sink):
                try:
                    client.close()
                except Exception as error:  # closing a client of a dead broker may fail too
                    logger.debug("closing %s: %s", type(client).__name__, error)
        self.status.disconnected()

    def _loop(self, checkpointer: Checkpointer, publisher: Publisher) -> None:
        source = checkpointer.source
        service = self.config.service
        connected_at, checkpoints_before = time.monotonic(), self.counters.checkpoints
        while not self._stopping:
            self.alive_at = time.monotonic()
            if self._failures_in_a_row and (
                self.counters.checkpoints > checkpoints_before
                or self.alive_at - connected_at > 2 * service.checkpoint_every_seconds
            ):
                self._made_progress()
            messages = source.poll(timeout=POLL_SECONDS, max_records=POLL_RECORDS)
            if self._apply_rebalances(checkpointer):
                continue  # every owned partition was re-positioned: the batch will be fetched again
            now = time.time()  # for records without a produce time (the join keeps stream time)
            if checkpointer.label_topic is not None:
                messages = checkpointer.in_time_order(messages, time.monotonic())
            commit_due = checkpointer.last_commit + service.commit_every_seconds
            for message in messages:
                self._handle(checkpointer, publisher, message, now)
                # A slow model takes most of a second over a full batch (ARF: ~1 ms an event):
                # its first outputs are committed on time, not after the batch.
                if (clock := time.monotonic()) >= commit_due:
                    checkpointer.tick(clock)
                    commit_due = clock + service.commit_every_seconds
            self._run_commands()
            now = time.monotonic()
            checkpointer.tick(now)
            if now - self._last_refresh >= STATUS_REFRESH_SECONDS:
                self._refresh_status(now)
            if now - self._last_status >= service.status_every_seconds:
                self._log_status(now)

    def _apply_rebalances(self, checkpointer: Checkpointer) -> bool:
        """Act on the rebalances noted since the last poll; True if there were any."""
        revoked = changed = False
        while not self._rebalances.empty():
            revoked |= self._rebalances.get()
            changed = True
        if changed:
            checkpointer.rebalance(revoked)
        return changed

    def _handle(self, checkpointer: Checkpointer, publisher: Publisher, message: Message, now: float) -> None:
        """One record: claim it, run the step, publish its prediction or dead letter."""
        owned = checkpointer.owner(message)
        if owned is None:  # revoked while the batch was in flight
            return
        publisher.source = message
        engine = owned.engine
        labels = owned.labels
        if owned.join is not None:
            now = owned.advance_clock(message, now)
        if labels is not None and message.topic == labels.topic:
            owned.claim(message.offset, labels.key)
            reason = owned.step.label(engine, message.value, message, now)
        else:
            owned.claim(message.offset)
            reason = owned.step(
                engine, message.value, owned.id.id_prefix, message.offset, publisher.prediction, message, now
            )
        if reason is not None:
            publisher.dead_letter(message, reason)
        for culprit, why in engine.take_unlearned():
            publisher.dead_letter(culprit, why)
        if owned.join is not None:
            for orphan, why in owned.join.take_orphans():
                publisher.dead_letter(orphan, why)

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
            except (NotOwnedError, SnapshotError) as error:  # the request's fault: the caller is told
                future.set_exception(error)
            except Exception as error:  # Kafka or disk: tell the caller, then recover as always
                future.set_exception(error)
                raise

    def _connected(self) -> Checkpointer:
        if self.checkpointer is None:
            raise NotOwnedError("this instance is not connected (recovering); it owns no partition now")
        return self.checkpointer

    def owned(self, scope: str) -> OwnedPartition:
        """The owned partition named ``scope`` (``topic-partition``); service thread."""
        return self._connected().owned(scope)

    def rollback(self, scope: str, snapshot_id: str) -> SnapshotManifest:
        """Switch a partition's model to a snapshot's, and commit that at once (service thread)."""
        return self._connected().rollback(scope, snapshot_id)

    def take_snapshot(self, scope: str) -> SnapshotManifest:
        """A manual snapshot of a partition's current state, committed at once (service thread)."""
        return self._connected().snapshot(scope)

    def pin(self, scope: str, snapshot_id: str, pinned: bool = True) -> SnapshotManifest:
        return self.owned(scope).engine.store.pin(snapshot_id, pinned)

    # -- reporting -------------------------------------------------------------------------

    def _refresh_status(self, now: float) -> None:
        """Rebuild the status (what the API, metrics and log line read) on the service thread."""
        checkpointer = self.checkpointer
        lag: dict[TopicPartition, int] = checkpointer.source.lag() if checkpointer else {}
        partitions = {}
        for partition, owned in (checkpointer.partitions if checkpointer else {}).items():
            partitions[owned.id.scope] = owned.engine.summary(
                PartitionStatus,
                offset=owned.next_offset,
                lag=lag.get(partition, 0),
                snapshot_bytes=owned.engine.last_snapshot_bytes,
                rolling_metric=owned.engine.state.metrics.primary_rolling[0],
                labels=None if owned.join is None else owned.join.summary(),
            )
        alarm = self.dead_letter_watch.alarm
        if alarm != self.status.latest.dead_letter_alarm:
            if alarm is not None:
                logger.error("most events are dead letters: %s", alarm)
            else:
                logger.info("dead letters are back to the odd event")
        self.status.refresh(
            now, time.time(), self.counters, partitions, sum(lag.values()), checkpointer is not None, alarm
        )
        self._last_refresh = now

    def _log_status(self, now: float) -> None:
        status = self.status.latest
        parts = [
            f"events/s={status.events_per_second:.0f}",
            f"lag={status.lag}",
            f"predictions={status.predictions}",
        ]
        for scope, partition in status.partitions.items():
            name = partition.rolling_metric
            parts.append(
                f"{scope}: {name.split(' ')[0]}={partition.metrics.get(name, float('nan')):.3f} "
                f"drifts={partition.drifts} snapshots={partition.snapshots} rollbacks={partition.rollbacks}"
            )
        logger.info("status %s", " ".join(parts))
        self._last_status = now
