"""The processing guarantee: restore, learn, checkpoint and commit, in one place.

This module is the whole exactly-once protocol; the README points here. Terms:

- a **partition's state** is its engine's :class:`~stream.prequential.LearnerState`, which records,
  for the partition, the offset of the next event it has not learned (``state.offsets[key]``);
- a **checkpoint** is a snapshot of that state made durable (written, fsynced, renamed);
- a **commit** makes the predictions and dead letters sent so far visible and stores the
  partition's next offset in the consumer group, with the id of its last checkpoint as the
  offset's metadata.

The protocol, per owned partition (:class:`OwnedPartition`), run by :class:`Checkpointer`:

1. **Claim.** Before an event is processed its offset is recorded in the state as learned, so a
   snapshot taken while learning it (warning, drift) never makes a restore learn it twice.
2. **Commit** (every ``service.commit_every_seconds``, looked at after every record, so a slow
   model's batch holds no output back; the first outputs after a rebalance at once, as a restore
   may have kept them waiting). ``exactly_once``: the open Kafka
   transaction holds every prediction and dead letter since the last commit; the consumer
   offsets are added to it (``send_offsets_to_transaction``) and it commits, so a
   ``read_committed`` reader sees an event's output exactly when its offset is committed.
   ``at_least_once``: the producer is flushed, then the offsets are committed; outputs sent after
   the last commit are sent again after a crash.
3. **Checkpoint** (every ``service.checkpoint_every_events`` or ``_seconds``, and at shutdown):
   each partition that learned since its last checkpoint is snapshotted durably, then committed
   at once, naming the new snapshot. A manual rollback's snapshot and a manual snapshot are
   checkpoints too, committed at once (no event reproduces them). A commit always names a
   checkpoint at or before the committed offset, so checkpoints bound the re-learning and
   commits need no snapshot of their own.
4. **Restore** (start, reconnect, and any rebalance that takes a partition away). The committed
   offset and the checkpoint it names are read; :func:`restore_point` loads that snapshot (or,
   if it is damaged or gone, the newest valid one at or before the committed offset); the events
   from the snapshot's offset to the committed one are re-learned through the same per-record
   step without publishing (their outputs are already committed); processing resumes at the
   committed offset. The snapshots written after the restored one are deleted first: the
   re-learning writes those up to the committed offset again, and the others belong to a commit
   that never happened (restored, or merely kept, they would change later drift decisions).
   Learning is deterministic, so the restored model equals the one that crashed, and
   predictions after the restore are byte-identical to an uninterrupted run.

   What a restore costs, and what bounds it: one snapshot load, plus re-learning the events since
   the checkpoint the commit names — at most ``service.checkpoint_every_events``, or what arrived
   in ``service.checkpoint_every_seconds`` — at the model's learning speed. A partition that
   re-learned anything is checkpointed and committed at the first tick after the restore (after
   committing the first outputs, which wait for no snapshot), so a crash loop never re-learns
   the same events again and again. While it re-learns, the member stays in its group (a
   paused poll every :data:`KEEP_ALIVE_SECONDS`), however long that takes; a rebalance that
   adds partitions commits the kept ones' outputs first, so no transaction stays open through a
   long restore.
5. **Rebalance.** A partition taken away — revoked, or found missing from the assignment without
   a revocation — aborts the open transaction (its outputs may cover events the new owner will
   process) and rebuilds every owned partition from its last commit as in 4; a partition added
   is restored as in 4.

Partitions are named one way, :class:`PartitionId`:

>>> partition = PartitionId("events", 0)
>>> partition.key, partition.scope, partition == ("events", 0)
('events:0', 'events-0', True)

and a restore point is chosen as described in 4:

>>> import tempfile
>>> from types import SimpleNamespace as State
>>> store = SnapshotStore(tempfile.mkdtemp())
>>> _ = store.save(State(offsets={"events:0": 100}), reason="checkpoint", offsets={"events:0": 100})
>>> _ = store.save(State(offsets={"events:0": 250}), reason="checkpoint", offsets={"events:0": 250})
>>> restore_point(store, {"events:0": 200})[0].id
'00000001-checkpoint'
>>> restore_point(store, {"events:0": 250})[0].id
'00000002-checkpoint'
>>> restore_point(store, {"events:0": 250}, checkpoint_id="00000001-checkpoint")[0].id
'00000001-checkpoint'
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

from connectors.base import Message, Position, Sink, Source, TopicPartition
from stream.changelog import decode_example, decode_join_entry, encode_example, encode_join_entry
from stream.config import Config
from stream.errors import NotOwnedError, SnapshotError
from stream.events import Event
from stream.join import Join
from stream.order import TimeOrder
from stream.prequential import Engine
from stream.snapshots import Reason, SnapshotManifest, SnapshotStore
from stream.status import Counters
from stream.step import RecordStep

logger = logging.getLogger(__name__)

# How often a restore shows the group it is alive while it re-learns; well under any
# max.poll.interval.ms a user would set.
KEEP_ALIVE_SECONDS = 0.5
# Delayed labels: records of one topic held for time order before its partition is paused.
MAX_HELD_IN_ORDER = 20_000


class PartitionId(NamedTuple):
    """A source partition; equal to the connectors' ``(topic, partition)`` tuple."""

    topic: str
    partition: int

    @property
    def key(self) -> str:
        """How the partition's offset is keyed in a state and a snapshot manifest."""
        return f"{self.topic}:{self.partition}"

    @property
    def scope(self) -> str:
        """The partition's folder under ``snapshots.directory``, and its name in the API."""
        return f"{self.topic}-{self.partition}"

    @property
    def id_prefix(self) -> str:
        """What an event without an id is named after: ``topic-partition-`` and its offset."""
        return f"{self.topic}-{self.partition}-"


def restore_point(
    store: SnapshotStore, committed: dict[str, int], checkpoint_id: str = ""
) -> tuple[SnapshotManifest, Any] | None:
    """The state to restore for a partition whose inputs are committed at ``committed`` (offsets
    by key: the input's first, then the labels' if any), loaded and checked.

    First the snapshot the commit names (``checkpoint_id``); failing that, the valid snapshot
    with the highest input offset not beyond any committed one. A snapshot beyond a committed
    offset belongs to a checkpoint whose transaction never committed: its records will be
    processed (and published) again, so it is never used.
    """
    key = next(iter(committed))

    def usable(manifest: SnapshotManifest) -> bool:
        return key in manifest.offsets and all(
            manifest.offsets.get(name, 0) <= offset for name, offset in committed.items()
        )

    def loaded(snapshot_id: str) -> tuple[SnapshotManifest, Any] | None:
        try:
            manifest, state = store.load_with_manifest(snapshot_id)
        except SnapshotError as error:
            logger.warning("cannot restore from snapshot %s: %s", snapshot_id, error)
            return None
        if not usable(manifest):  # the named one may lie beyond the commit; the others do not
            return None
        if getattr(state, "offsets", {}).get(key) != manifest.offsets[key]:
            logger.warning("snapshot %s: its state and manifest disagree on the offset; skipped", snapshot_id)
            return None
        return manifest, state

    # The one the commit names first, without reading the others' manifests (each a request in S3).
    if checkpoint_id and (found := loaded(checkpoint_id)) is not None:
        return found
    others = [m for m in store.list() if usable(m) and m.id != checkpoint_id]
    for manifest in sorted(others, key=lambda m: (m.offsets[key], m.sequence), reverse=True):
        if (found := loaded(manifest.id)) is not None:
            return found
    return None


@dataclass
class OwnedPartition:
    """A partition this instance owns: its engine, its step, and how far it is checkpointed and
    committed; with delayed labels, the partition of labels that goes with it and their join."""

    id: PartitionId
    engine: Engine
    checkpoint_id: str = ""  # what commits name: restore from it, then re-learn up to the commit
    since_checkpoint: int = 0  # records learned (or re-learned by its restore) since its checkpoint
    uncommitted: bool = False  # a record was claimed since the last commit
    labels: PartitionId | None = None
    join: Join | None = None
    order: TimeOrder | None = None  # its events' and labels' records held, to go in time order
    clock: float = 0.0  # delayed labels: stream time, the latest produce time of its records (s)
    step: RecordStep = field(init=False)  # set by whoever builds it: the step may refer to it

    @property
    def next_offset(self) -> int:
        return self.engine.state.offsets[self.id.key]

    @property
    def next_label_offset(self) -> int:
        assert self.labels is not None
        return self.engine.state.offsets[self.labels.key]

    def advance_clock(self, message: Message, wall_clock: float) -> float:
        """The join's clock after ``message``: stream time, as Kafka Streams keeps it (a record
        without a produce time counts as produced now). Not the wall clock: after an outage the
        backlog's labels join their events as they would have, not expire in a heap."""
        produced = message.timestamp_ms / 1000 if message.timestamp_ms >= 0 else wall_clock
        if produced > self.clock:
            self.clock = produced
        return self.clock

    def claim(self, offset: int, key: str | None = None) -> None:
        """Record the record at ``offset`` (of the input, or of the partition ``key`` names) as
        processed, before it is (protocol step 1)."""
        self.engine.state.offsets[key or self.id.key] = offset + 1
        self.since_checkpoint += 1
        self.uncommitted = True

    def checkpoint(self, reason: Reason) -> SnapshotManifest:
        return self.checkpointed(self.engine.checkpoint(reason))

    def checkpointed(self, manifest: SnapshotManifest) -> SnapshotManifest:
        """``manifest`` (a snapshot of the state as it is now) is what commits name from now on."""
        self.checkpoint_id, self.since_checkpoint = manifest.id, 0
        return manifest


class Checkpointer:
    """Runs the protocol above for every partition one instance owns, over one source and sink."""

    def __init__(
        self,
        config: Config,
        source: Source,
        sink: Sink,
        counters: Counters,
        dead_letter: Callable[[Message, str], None],
        on_label_delay: Callable[[float], None] | None = None,
        instance_id: str | None = None,
    ) -> None:
        self.config = config
        self.instance_id = instance_id  # recorded as the owner of the partitions it restores
        self.source = source
        self.sink = sink
        self.counters = counters
        self.on_label_delay = on_label_delay
        kafka = config.kafka
        self.input_topic, self.label_topic = kafka.input_topic, kafka.label_topic
        self._paused: set[TopicPartition] = set()  # partitions with too many records held in order
        # Where a checkpoint sends the events its healing unlearned (in the transaction it commits).
        self.dead_letter = dead_letter
        self.partitions: dict[TopicPartition, OwnedPartition] = {}  # keyed by PartitionId
        self._last_checkpoint = self.last_commit = time.monotonic()
        # A restore re-learned events no checkpoint holds: checkpoint at the next tick.
        self._checkpoint_at_next_tick = False

    def owner(self, message: Message) -> OwnedPartition | None:
        """The owned partition of ``message`` (an event's or a label's); None if it was revoked
        while its batch was in flight."""
        topic = self.input_topic if message.topic == self.label_topic else message.topic
        return self.partitions.get((topic, message.partition))

    def owned(self, scope: str) -> OwnedPartition:
        """The owned partition named ``scope`` (``topic-partition``)."""
        for owned in self.partitions.values():
            if owned.id.scope == scope:
                return owned
        raise NotOwnedError(f"this instance does not own {scope!r}; it owns {self.scopes()}")

    def scopes(self) -> list[str]:
        return sorted(owned.id.scope for owned in self.partitions.values())

    # -- partitions come and go ------------------------------------------------------------

    def rebalance(self, revoked: bool) -> None:
        """Follow the source's assignment (protocol step 5); then every owned partition is
        positioned at its next event."""
        assignment = {PartitionId(*tp) for tp in self.source.assignment() if tp[0] == self.input_topic}
        if revoked or not assignment.issuperset(self.partitions):
            # What is not committed yet may belong to a partition that is gone (announced or not):
            # drop it all, and restore every partition from its commit.
            if self.sink.transactional:
                self.sink.abort()
                self.sink.begin()
            self.partitions, self._checkpoint_at_next_tick = {}, False
        elif any(owned.uncommitted for owned in self.partitions.values()):
            # The partitions kept are still ours: commit what they did before the new ones
            # re-learn, however long that takes, so that no transaction stays open meanwhile.
            self.commit()
        for partition in sorted(assignment - self.partitions.keys()):
            owned, count = self._restore(partition)
            self.partitions[partition] = owned
            if count:
                # Checkpointed at the next tick, after the first outputs are committed: the next
                # restore starts there, and a crash loop does not re-learn the same events again.
                self._checkpoint_at_next_tick = True
        # A rebalance noted while re-learning may have taken partitions away since; the next
        # round of the loop acts on it.
        assigned = self.source.assignment()
        for partition, owned in self.partitions.items():
            if partition in assigned:
                self.source.seek(partition, owned.next_offset)
            if owned.labels is not None and owned.labels in assigned:
                self.source.seek(owned.labels, owned.next_label_offset)
            if owned.order is not None:
                owned.order.clear()  # what it held will be read again
        if self._paused:
            self.source.resume(sorted(self._paused))
            self._paused = set()
        # The restores' commit held no outputs: the first ones after them are committed at once.
        self.last_commit = -math.inf
        logger.info("assignment: %s", sorted(owned.id.key for owned in self.partitions.values()))

    def _restore(self, partition: PartitionId) -> tuple[OwnedPartition, int]:
        """The partition's state at its committed offset: snapshot, then silent re-learning (step 4);
        and how many records were re-learned."""
        source = self.source
        labels = None if self.label_topic is None else PartitionId(self.label_topic, partition.partition)
        committed: dict[str, int] = {}
        checkpoint_id = ""
        for inputs in (partition,) if labels is None else (partition, labels):
            position = source.committed(inputs)
            committed[inputs.key] = position[0] if position else source.beginning_offset(inputs)
            if position and inputs == partition:
                checkpoint_id = position[1]
        store = SnapshotStore.from_config(self.config.snapshots, partition.scope)
        restored = restore_point(store, committed, checkpoint_id)
        after = restored[0].sequence if restored else store.next_sequence() - 1
        # From here on only this instance writes the partition's snapshots: one that owned it
        # before and still runs (paused past its session, say) is fenced off.
        epoch = store.take_ownership(after, self.instance_id)
        if restored is None:
            engine = Engine(self.config, store)
            start = source.beginning_offset(partition)
            origin = "a new model"
        else:
            manifest, state = restored
            # What was written after the restore point is either written again by the re-learning
            # below or belongs to a run whose commit never happened: gone, it cannot crowd the
            # restored history's snapshots out of retention or stand in for one of them.
            discarded = store.discard_after(after)
            if discarded:
                logger.info("%s: discarded %d snapshots written after %s: %s",
                            partition.key, len(discarded), manifest.id, ", ".join(discarded))  # fmt: skip
            engine = Engine(self.config, store, state)
            start = manifest.offsets[partition.key]
            origin = f"snapshot {manifest.id}"
        logger.debug("%s: snapshot ownership epoch %d", partition.key, epoch)
        join = None if labels is None else Join(self.config.labels, self.on_label_delay, track_changes=True)
        order = None if labels is None else TimeOrder(self.config.labels.order_wait_seconds, time.monotonic())
        owned = OwnedPartition(
            partition, engine, restored[0].id if restored else "", labels=labels, join=join, order=order
        )
        owned.step = RecordStep(
            self.config, join, None if join is None else partial(self._write_example, owned)
        )
        if join is None:
            relearned = self._relearn_input(owned, start, committed[partition.key])
        else:
            relearned = self._relearn_examples(owned)
            self._restore_join(owned)
        owned.since_checkpoint, owned.uncommitted = relearned, False
        # Events healing unlearned were dead-lettered when they were first processed.
        engine.take_unlearned()
        for key, offset in committed.items():
            engine.state.offsets[key] = max(engine.state.offsets.get(key, 0), offset)
        self.counters.relearned += relearned
        if join is None:
            logger.info(
                "restored %s from %s at offset %d; re-learned %d events up to the committed offset %d",
                partition.key, origin, start, relearned, committed[partition.key],
            )  # fmt: skip
        else:
            logger.info(
                "restored %s from %s; re-learned %d examples; committed offsets %s",
                partition.key, origin, relearned, committed,
            )  # fmt: skip
        return owned, relearned

    def _relearn_input(self, owned: OwnedPartition, start: int, committed: int) -> int:
        """Learn the input's events from ``start`` to the committed offset again, silently."""
        partition, engine = owned.id, owned.engine
        engine.state.offsets[partition.key] = start
        relearned = 0
        with self._keeping_alive() as keep_alive:
            for message in self.source.read_range(partition, start, committed):
                owned.claim(message.offset)
                # A refused record was dead-lettered when it was first processed; now it only counts.
                # One whose learning broke the model may only be found by the checkpoint after the
                # restore (the run that first learned it died before): that one names the record.
                owned.step(engine, message.value, partition.id_prefix, message.offset, origin=message)
                relearned += 1
                keep_alive()
        return relearned

    def _relearn_examples(self, owned: OwnedPartition) -> int:
        """Delayed labels: learn the examples written after the snapshot, in the order written."""
        engine, examples = owned.engine, PartitionId(self.config.kafka.examples_topic, owned.id.partition)
        source = self.source
        start = max(engine.state.offsets.get(examples.key, 0), source.beginning_offset(examples))
        relearned = 0
        with self._keeping_alive() as keep_alive:
            for message in source.read_range(examples, start, source.end_offset(examples)):
                seq, event, prediction = decode_example(message.value or b"")
                if seq <= engine.state.examples_learned:  # in the snapshot already
                    continue
                if seq != engine.state.examples_learned + 1:
                    logger.error("%s: examples %d..%d are gone (topic retention); the model misses them",
                                 examples.key, engine.state.examples_learned + 1, seq - 1)  # fmt: skip
                engine.relearn_example(seq, event, prediction, origin=message)
                relearned += 1
                keep_alive()
        return relearned

    def _restore_join(self, owned: OwnedPartition) -> None:
        """Delayed labels: the join as of the last commit, from its changelog."""
        assert owned.join is not None
        changelog = PartitionId(self.config.kafka.join_topic, owned.id.partition)
        source = self.source
        records = source.read_range(
            changelog, source.beginning_offset(changelog), source.end_offset(changelog)
        )
        entries = []
        for message in records:
            key = (message.key or b"").decode()
            entries.append((key, decode_join_entry(key, message.value)))
        owned.join.restore(entries)
        logger.info("%s: the join holds %d waiting events and %d held labels",
                    owned.id.key, owned.join.waiting, owned.join.held)  # fmt: skip

    def _write_example(self, owned: OwnedPartition, event: Event, prediction: dict[str, Any] | None) -> None:
        """Delayed labels: an example the partition's model is about to learn, in order."""
        state = owned.engine.state
        state.examples_learned += 1
        value = encode_example(state.examples_learned, event, prediction)
        self.sink.send(self.config.kafka.examples_topic, value, partition=owned.id.partition)

    @contextmanager
    def _keeping_alive(self) -> Iterator[Callable[[], None]]:
        """A function to call between records of a long re-learning: it shows the group this
        member is alive every :data:`KEEP_ALIVE_SECONDS`."""
        due = time.monotonic() + KEEP_ALIVE_SECONDS

        def keep_alive() -> None:
            nonlocal due
            if time.monotonic() >= due:
                self.source.keep_alive()
                due = time.monotonic() + KEEP_ALIVE_SECONDS

        yield keep_alive

    # -- checkpoints and commits -----------------------------------------------------------

    def tick(self, now: float) -> None:
        """Checkpoint or commit if one is due (protocol steps 2 and 3)."""
        service = self.config.service
        if self.label_topic is not None:
            self._expire_waiting()
        pending = sum(owned.since_checkpoint for owned in self.partitions.values())
        commit_due = now - self.last_commit >= service.commit_every_seconds and any(
            owned.uncommitted for owned in self.partitions.values()
        )
        if self._checkpoint_at_next_tick:
            if commit_due:
                self.commit()  # the first outputs since the restores wait for no snapshot
            self.checkpoint("checkpoint")
        elif pending >= service.checkpoint_every_events or (
            pending and now - self._last_checkpoint >= service.checkpoint_every_seconds
        ):
            self.checkpoint("checkpoint")
        elif commit_due:
            self.commit()

    def in_time_order(self, messages: list[Message], now: float) -> list[Message]:
        """Delayed labels: ``messages`` held with those of their partitions, and what can go now,
        in produce-time order (:mod:`stream.order`); ``now``: a monotonic clock."""
        for message in messages:
            owned = self.owner(message)
            if owned is not None and owned.order is not None:
                owned.order.add(message, message.topic == self.label_topic, now)
        ready: list[Message] = []
        lag: dict[TopicPartition, int] | None = None
        for owned in self.partitions.values():
            order = owned.order
            if not order:
                continue
            if lag is None:
                lag = self.source.lag()
            sides = {False: owned.id, True: owned.labels}
            ready.extend(
                order.take(now, lambda is_label, lag=lag, sides=sides: lag.get(sides[is_label], 1) == 0)
            )
            for is_label, partition in sides.items():
                assert partition is not None
                held = order.held(is_label)
                if held >= MAX_HELD_IN_ORDER and partition not in self._paused:
                    self.source.pause([partition])
                    self._paused.add(partition)
                elif held < MAX_HELD_IN_ORDER // 2 and partition in self._paused:
                    self.source.resume([partition])
                    self._paused.discard(partition)
        return ready

    def _expire_waiting(self) -> None:
        """What waited past its time (stream time) expires, between records too."""
        for owned in self.partitions.values():
            assert owned.join is not None
            owned.join.expire(owned.clock)
            for origin, why in owned.join.take_orphans():
                self.dead_letter(origin, why)
            if owned.join.changed:
                owned.uncommitted = True

    def checkpoint(self, reason: Reason) -> None:
        """Snapshot every partition that learned (or re-learned) since its last checkpoint (durably;
        all of them at shutdown), then commit."""
        if reason == "shutdown" and any(owned.uncommitted for owned in self.partitions.values()):
            # Outputs first, once: the examples they include then lie below the end offset the
            # snapshot records (:meth:`_checkpoint`), and a restart reads none of them again.
            self.commit()
        snapshotted = []
        for owned in self.partitions.values():
            if owned.since_checkpoint or reason == "shutdown":
                self._checkpoint(owned, reason)
                snapshotted.append(owned.id)
        self._last_checkpoint, self._checkpoint_at_next_tick = time.monotonic(), False
        self.counters.checkpoints += 1
        self.commit(snapshotted)

    def _checkpoint(self, owned: OwnedPartition, reason: Reason) -> SnapshotManifest:
        if owned.join is not None:
            # Where a restore starts reading the examples: none this state learned lies beyond it.
            examples = PartitionId(self.config.kafka.examples_topic, owned.id.partition)
            owned.engine.state.offsets[examples.key] = self.source.end_offset(examples)
        manifest = owned.checkpoint(reason)
        for message, why in owned.engine.take_unlearned():
            self.dead_letter(message, why)
        return manifest

    def commit(self, snapshotted: Collection[TopicPartition] = ()) -> None:
        """Make the outputs so far visible and commit each partition's next offset (step 2).

        A partition with a new snapshot is always committed, so that a rollback, which no event
        reproduces, sticks.
        """
        positions: dict[TopicPartition, Position] = {}
        for partition, owned in self.partitions.items():
            if owned.uncommitted or partition in snapshotted:
                positions[partition] = (owned.next_offset, owned.checkpoint_id)
                if owned.labels is not None:
                    positions[owned.labels] = (owned.next_label_offset, "")
            if owned.join is not None:
                self._write_join_changes(owned)
        if self.sink.transactional:
            self.sink.commit(positions, self.source.group_metadata())
            self.sink.begin()
        else:
            self.sink.flush()
            if positions:
                self.source.commit(positions)
        for owned in self.partitions.values():
            owned.uncommitted = False
        self.last_commit = time.monotonic()
        self.counters.commits += 1

    def _write_join_changes(self, owned: OwnedPartition) -> None:
        """Delayed labels: the join's changes since the last commit, in the transaction."""
        assert owned.join is not None
        topic, partition = self.config.kafka.join_topic, owned.id.partition
        for key, entry in owned.join.take_changes():
            self.sink.send(topic, encode_join_entry(key, entry), key=key.encode(), partition=partition)

    def rollback(self, scope: str, snapshot_id: str) -> SnapshotManifest:
        """Switch a partition's model to a snapshot's; the rollback's own snapshot is committed at
        once as the partition's checkpoint (no event will reproduce the rollback)."""
        owned = self.owned(scope)
        manifest = owned.checkpointed(owned.engine.rollback(snapshot_id))
        self.commit([owned.id])
        logger.info("rolled %s back to %s", owned.id.key, snapshot_id)
        return manifest

    def snapshot(self, scope: str) -> SnapshotManifest:
        """A manual snapshot of a partition's state, committed at once as its checkpoint: part of
        the history every restore keeps."""
        owned = self.owned(scope)
        manifest = self._checkpoint(owned, "manual")
        self.commit([owned.id])
        return manifest
