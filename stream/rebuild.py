"""``stream rebuild``: a partition's model trained again from its examples topic.

With delayed labels the service writes every example it learns, in order, to
``<group>.<input>.examples`` (:mod:`stream.changelog`). That is also the way across a change that
makes the snapshots unloadable (a River upgrade: its pickles do not load across versions): with
the service stopped, ``stream rebuild`` trains a fresh model of the current configuration on the
examples the partition's last checkpoint had learned, in their order, and writes it in that
checkpoint's place (same id, same offsets: the commit names it), so that the service restores it
and goes on from there. The policy's warning and drift snapshots of the rebuild are not kept:
the rebuilt model starts with no candidates to roll back to.

It needs every example from the first: if the topic's retention has deleted some, it refuses
(the model would silently miss them); keep the examples topic's retention (``retention.ms``)
longer than you keep a model, or unlimited.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import Callable

from connectors.base import Connector
from stream.changelog import decode_example
from stream.checkpoint import PartitionId
from stream.config import Config
from stream.errors import ConfigError, SnapshotError
from stream.prequential import Engine
from stream.snapshots import SnapshotManifest, SnapshotStore

logger = logging.getLogger(__name__)


def rebuild_partition(
    config: Config,
    connector: Connector,
    partition: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> SnapshotManifest:
    """Rebuild one partition's last checkpoint from its examples; the new manifest."""
    kafka = config.kafka
    if kafka.label_topic is None:
        raise ConfigError("kafka.label_topic: only delayed labels write the examples a rebuild trains on")
    input_partition = PartitionId(kafka.input_topic, partition)
    store = SnapshotStore.from_config(config.snapshots, input_partition.scope)
    examples = PartitionId(kafka.examples_topic, partition)
    # A reader of ranges and of the service group's commits: it subscribes to nothing, so it joins
    # no group (a member never polled could hold its close up, and the service's group up).
    source = connector.source([], kafka.group_id, f"rebuild-{uuid.uuid4().hex[:8]}")
    engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="stream-rebuild-")))
    try:
        position = source.committed(input_partition)
        if position is None or not position[1]:
            raise SnapshotError(f"{input_partition.key}: no commit names a checkpoint to rebuild (the "
                                "partition restores from its examples without one)")  # fmt: skip
        last = store.get(position[1])  # the checkpoint the commit names: what the service restores
        start, end = source.beginning_offset(examples), source.end_offset(examples)
        for message in source.read_range(examples, start, end):
            seq, event, prediction = decode_example(message.value or b"")
            if seq > last.examples_learned:
                break
            if seq != engine.state.examples_learned + 1:
                raise SnapshotError(
                    f"{examples.key}: examples {engine.state.examples_learned + 1}..{seq - 1} are gone "
                    "(topic retention): a rebuilt model would miss them"
                )
            engine.relearn_example(seq, event, prediction)
            if on_progress is not None:
                on_progress(seq, last.examples_learned)
    finally:
        source.close()
    if engine.state.examples_learned != last.examples_learned:
        raise SnapshotError(
            f"{examples.key}: {engine.state.examples_learned} examples found, the checkpoint "
            f"{last.id} learned {last.examples_learned}"
        )
    state = engine.state
    state.offsets = dict(last.offsets)  # where the checkpoint stands, and where its examples end
    state.recent_snapshots.clear()  # the rebuild's own snapshots are not kept
    state.last_snapshot_id = last.id
    state.next_sequence = last.sequence + 1
    store.take_ownership(last.sequence - 1, instance="stream rebuild")  # the service is stopped
    manifest = store.save(
        state,
        last.reason,
        sequence=last.sequence,
        parent=last.parent,
        events_seen=state.events,
        labelled_seen=state.labelled,
        model_version=state.model_version,
        offsets=dict(state.offsets),
        examples_learned=state.examples_learned,
        note=f"rebuilt from {state.examples_learned} examples of {kafka.examples_topic}",
    )
    logger.info("%s: %s rebuilt from %d examples", input_partition.scope, manifest.id, state.examples_learned)
    return manifest
