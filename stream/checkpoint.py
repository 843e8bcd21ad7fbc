"""Checkpoints: where a partition's model state meets the consumer offsets.

Every snapshot records, per source partition, the offset of the next event the state has not
learned. The service commits consumer offsets only after the snapshot for those offsets is
durable, so on (re)start the right state is always there: the newest valid snapshot at or before
the committed offset. Events between that snapshot and the committed offset are re-learned
silently (their predictions were already published); events from the committed offset on are
processed normally.

>>> import tempfile
>>> store = SnapshotStore(tempfile.mkdtemp())
>>> _ = store.save("state at 100", reason="checkpoint", offsets={"events:0": 100})
>>> _ = store.save("state at 250", reason="checkpoint", offsets={"events:0": 250})
>>> restore_point(store, "events:0", committed=200)[0].offsets
{'events:0': 100}
"""

from __future__ import annotations

import logging
from typing import Any

from stream.snapshots import SnapshotError, SnapshotManifest, SnapshotStore

logger = logging.getLogger(__name__)


def partition_key(topic: str, partition: int) -> str:
    """How offsets are keyed in snapshot manifests: ``"topic:partition"``."""
    return f"{topic}:{partition}"


def restore_point(store: SnapshotStore, key: str, committed: int) -> tuple[SnapshotManifest, Any] | None:
    """The valid snapshot with the highest offset for ``key`` not beyond ``committed``, loaded.

    A snapshot beyond the committed offset belongs to a checkpoint whose transaction never
    committed: its events will be processed (and published) again, so it must not be used.
    """
    candidates = [m for m in store.list() if key in m.offsets and m.offsets[key] <= committed]
    candidates.sort(key=lambda m: (m.offsets[key], m.sequence), reverse=True)
    for manifest in candidates:
        try:
            return manifest, store.load(manifest.id)
        except SnapshotError as error:
            logger.warning("cannot restore from snapshot %s: %s", manifest.id, error)
    return None
