"""Checkpoints: where a partition's model state meets the consumer offsets.

Every snapshot records, per source partition, the offset of the next event it has not learned.
Each commit of consumer offsets names, in its metadata, the partition's last durable checkpoint
snapshot, taken at or before the committed offset; so on (re)start the right state is always
there: that snapshot, or if it is damaged or gone, the newest valid snapshot at or before the
committed offset. Events between the restored snapshot and the committed offset are re-learned
silently (their predictions were already published); events from the committed offset on are
processed normally. Learning is deterministic, so the re-learned state equals the lost one.

>>> import tempfile
>>> from types import SimpleNamespace as State
>>> store = SnapshotStore(tempfile.mkdtemp())
>>> _ = store.save(State(offsets={"events:0": 100}), reason="checkpoint", offsets={"events:0": 100})
>>> _ = store.save(State(offsets={"events:0": 250}), reason="checkpoint", offsets={"events:0": 250})
>>> restore_point(store, "events:0", committed=200)[0].id
'00000001-checkpoint'
>>> restore_point(store, "events:0", committed=250)[0].id
'00000002-checkpoint'
>>> restore_point(store, "events:0", committed=250, checkpoint_id="00000001-checkpoint")[0].id
'00000001-checkpoint'
"""

from __future__ import annotations

import logging
from typing import Any

from stream.snapshots import SnapshotError, SnapshotManifest, SnapshotStore

logger = logging.getLogger(__name__)


def partition_key(topic: str, partition: int) -> str:
    """How offsets are keyed in snapshot manifests: ``"topic:partition"``."""
    return f"{topic}:{partition}"


def snapshot_scope(topic: str, partition: int) -> str:
    """The folder of a partition's snapshots under ``snapshots.directory`` (and its API name)."""
    return f"{topic}-{partition}"


def restore_point(
    store: SnapshotStore, key: str, committed: int, checkpoint_id: str = ""
) -> tuple[SnapshotManifest, Any] | None:
    """The state to restore for partition ``key`` at ``committed``, loaded and checked.

    First the snapshot the commit names (``checkpoint_id``); failing that, the valid snapshot
    with the highest offset for ``key`` not beyond ``committed``. A snapshot beyond the committed
    offset belongs to a checkpoint whose transaction never committed: its events will be
    processed (and published) again, so it is never used.
    """
    candidates = [m for m in store.list() if key in m.offsets and m.offsets[key] <= committed]
    candidates.sort(key=lambda m: (m.id == checkpoint_id, m.offsets[key], m.sequence), reverse=True)
    for manifest in candidates:
        try:
            state = store.load(manifest.id)
        except SnapshotError as error:
            logger.warning("cannot restore from snapshot %s: %s", manifest.id, error)
            continue
        if getattr(state, "offsets", {}).get(key) != manifest.offsets[key]:
            logger.warning("snapshot %s: its state and manifest disagree on the offset; skipped", manifest.id)
            continue
        return manifest, state
    return None
