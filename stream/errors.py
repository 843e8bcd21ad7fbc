"""The errors this package raises on purpose, under one base.

Each names whose fault it is, so callers catch what they can act on and let the rest (a bug, a
lost broker, a full disk) go to the recovery that handles those:

- :class:`ConfigError`, :class:`ModelError`, :class:`MetricError`: the configuration; the
  service refuses to start.
- :class:`InvalidEvent`: one event; it becomes a dead letter with the message as its reason.
- :class:`SnapshotError`: a snapshot that is missing (:class:`SnapshotNotFound`), damaged,
  tampered with or from another River version; a restore skips it, a request is refused.
- :class:`SnapshotWriteError`: the snapshot store refused a write (disk full, read-only); the
  service recovers from its last commit and backs off. :class:`SnapshotFenced`: another instance
  took the partition over (this one was paused past its session, a zombie); it recovers the same way.
- :class:`ModelFailure`: a model that stopped answering and could not be healed; not any one
  event's fault, so the service recovers (and reports it) instead of dead-lettering every event.
- :class:`NotOwnedError`: a request for a partition another instance owns (HTTP 409).

>>> issubclass(SnapshotNotFound, StreamError), issubclass(NotOwnedError, KeyError)
(True, False)
"""

from __future__ import annotations


class StreamError(Exception):
    """Base of every error raised on purpose by this package."""


class ConfigError(StreamError, ValueError):
    """A configuration that cannot be used; the message names each bad key."""


class ModelError(StreamError, ValueError):
    """A model specification that cannot be built or does not fit the task."""


class MetricError(StreamError, ValueError):
    """An unknown metric name."""


class InvalidEvent(StreamError, ValueError):
    """An event that cannot be used; the message is the reason recorded with the dead letter."""


class SnapshotError(StreamError, RuntimeError):
    """A snapshot that is missing, damaged, tampered with or from another River version."""


class SnapshotNotFound(SnapshotError):
    """No snapshot with that id in the store."""


class SnapshotWriteError(StreamError, OSError):
    """The snapshot store could not write (disk full, read-only, permissions); nothing was lost."""


class SnapshotFenced(SnapshotWriteError):
    """Another instance took the partition over: this one may no longer write its snapshots."""


class ModelFailure(StreamError, RuntimeError):
    """The model gives no finite output for any input, and undoing recent events does not help."""


class NotOwnedError(StreamError):
    """The partition named by a request is not owned by this instance."""
