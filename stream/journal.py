"""The journal: what an engine learned since a state known to be good, so learning can be undone.

Learning one event is all or nothing, and no single event may leave a model broken. River models
cannot undo a ``learn_one``, and copying the model before every event would cost more than
learning it. So the engine keeps, in memory, a state known to be good (one that answers) and the
events it learned since. Any later state is that state plus those events, predicted and learned
again: learning is deterministic. Undoing an event is rebuilding without it; the cost is paid only
when something went wrong.

The good state costs the loop no pickle of its own: it is the fresh model (built again from the
configuration when needed), or the pickle a checkpoint writes anyway. Only a restored state, or
a window that outgrew ``max_entries`` or ``budget_bytes`` without a checkpoint, is pickled here.
That matters beyond the pickle's own time: on CPython 3.11 pickling an object materializes its
attribute dict, and the object's attribute reads are slower ever after (measured in the README).

The events are kept in one flat list, their values one after the other (features, label, id,
where they came from), and none of them is an object the garbage collector goes on tracking: the
features are a dict of plain values, which it never tracks, and an origin that is a NamedTuple
(the service's consumed records) is kept as a plain tuple and named again when read. A tuple per
entry would be tracked for as long as it is kept (CPython never stops tracking a tuple that holds
a dict, nor an instance of a tuple subclass), and thousands of them would make every full
collection of the heap longer and more frequent: the service made 6 per 100,000 events with them,
Quix Streams 2 (README, "Measured cost of the engine").

>>> from stream.pickling import dumps
>>> journal = Journal()
>>> journal.due()
True
>>> journal.start(dumps({"weights": [1.0]}), answered={"a": 1.0})
>>> journal.record({"a": 2.0}, True, "e-1", origin=7, size=30)
>>> journal.due(), [entry.origin for entry in journal.entries]
(False, [7])
>>> journal.base_state()
{'weights': [1.0]}

A fresh model needs no pickle: the function that builds it will do.

>>> journal.start(lambda: {"weights": [0.0]}, answered=None)
>>> journal.base_state(), journal.entries
({'weights': [0.0]}, [])

Large events start a new window sooner, so the journal's memory stays bounded:

>>> journal = Journal(budget_bytes=1000)
>>> journal.start(dumps({}), answered={})
>>> journal.record({}, None, "big", origin=8, size=1000)
>>> journal.due()
True
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from stream import pickling

# Events kept at most before a new good state is pickled: a rebuild stays short. The service's
# checkpoints (every 10,000 events by default) start new windows sooner.
MAX_ENTRIES = 50_000
# The bytes of events kept at most (large events start a new window sooner).
BUDGET_BYTES = 64 * 1024 * 1024
# The values an entry takes in the journal's list: x, y, id, origin, prediction, and the index of
# the origin's NamedTuple class (-1: the origin is kept as it came).
_VALUES = 6


class JournalEntry(NamedTuple):
    """One learned event: what the engine needs to learn it again, and where it came from (the
    caller's, to dead-letter it if its learning has to be undone)."""

    x: dict[str, Any]
    y: Any
    id: str | None
    origin: Any
    prediction: dict[str, Any] | None  # kept only when made before the state that learned it


class Journal:
    """A good state (pickled) and the events learned since, oldest first."""

    def __init__(self, budget_bytes: int = BUDGET_BYTES, max_entries: int = MAX_ENTRIES) -> None:
        self.budget_bytes = budget_bytes
        self.max_entries = max_entries
        self._bytes = 0
        self._load_base: Callable[[], Any] | None = None
        self.answered: dict[str, Any] | None = None  # features the good state gave a finite output for
        self._kept: list[Any] = []  # _VALUES values an entry, oldest first
        self._origin_kinds: list[type] = []  # the NamedTuple classes of origins kept as plain tuples

    def due(self) -> bool:
        """Whether a new good state should be kept (none yet, or the window is full)."""
        return (
            self._load_base is None
            or len(self._kept) >= self.max_entries * _VALUES
            or self._bytes >= self.budget_bytes
        )

    def start(self, base: bytes | Callable[[], Any], answered: dict[str, Any] | None) -> None:
        """Keep a good state, pickled (``bytes``) or built by a function (a fresh model), which
        has answered ``answered`` (None: nothing asked yet); no event learned since."""
        self._load_base = partial(pickling.loads, base) if isinstance(base, bytes) else base
        self.answered = answered
        self._kept, self._bytes = [], 0

    def record(
        self,
        x: dict[str, Any],
        y: Any,
        event_id: str | None,
        origin: Any,
        size: int = 0,
        prediction: dict[str, Any] | None = None,
    ) -> None:
        """Keep a learned event; ``size``: the bytes it came as, held against the budget;
        ``prediction``: the one it was learned with, if an earlier state made it."""
        self._kept += self._plain(x, y, event_id, origin, prediction)
        self._bytes += size

    def _plain(self, x: dict[str, Any], y: Any, event_id: str | None, origin: Any, prediction: Any) -> tuple:
        kind = type(origin)
        if kind is tuple or not isinstance(origin, tuple):
            return x, y, event_id, origin, prediction, -1
        kinds = self._origin_kinds
        if kind not in kinds:
            kinds.append(kind)
        return x, y, event_id, tuple(origin), prediction, kinds.index(kind)

    def _entry(self, start: int) -> JournalEntry:
        x, y, event_id, origin, prediction, kind = self._kept[start : start + _VALUES]
        return JournalEntry(
            x, y, event_id, origin if kind < 0 else self._origin_kinds[kind]._make(origin), prediction
        )

    @property
    def entries(self) -> list[JournalEntry]:
        """The events learned since the good state, oldest first."""
        return [self._entry(start) for start in range(0, len(self._kept), _VALUES)]

    @property
    def latest(self) -> JournalEntry | None:
        """The event learned last, if any since the good state."""
        return self._entry(len(self._kept) - _VALUES) if self._kept else None

    @entries.setter
    def entries(self, entries: list[JournalEntry]) -> None:
        self._kept = [value for entry in entries for value in self._plain(*entry)]

    @property
    def started(self) -> bool:
        return self._load_base is not None

    def base_state(self) -> Any:
        """A fresh copy of the good state."""
        assert self._load_base is not None, "no good state kept yet"
        return self._load_base()

    def clear(self) -> None:
        """Forget everything: the state changed in a way no event reproduces (a manual rollback)."""
        self._load_base, self.answered, self._kept, self._bytes = None, None, [], 0
