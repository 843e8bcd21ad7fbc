"""The journal: what an engine learned since a state known to be good, so learning can be undone.

Learning one event is all or nothing, and no single event may leave a model broken. River models
cannot undo a ``learn_one``, and copying the model before every event would cost more than
learning it. So the engine keeps, in memory, a pickled state from before some recent event (taken
right after a prediction succeeded: a state that answers) and the events it learned since. Any
later state is that state plus those events, predicted and learned again: learning is
deterministic. Undoing an event is rebuilding without it; the cost is paid only when something
went wrong.

The events are kept as tuples of plain values (features, label, id, and where they came from),
which the garbage collector does not track: thousands of them cost the loop nothing. A new good
state is pickled every ``window`` events, the window growing with the pickle (a large model is
pickled less often) so that pickling stays a small share of the loop, and sooner when the events
kept reach ``budget_bytes``.

>>> journal = Journal()
>>> journal.due()
True
>>> journal.start({"weights": [1.0]}, answered={"a": 1.0})
>>> journal.record({"a": 2.0}, True, "e-1", origin=7, size=30)
>>> journal.due(), [entry.origin for entry in journal.entries], journal.window
(False, [7], 2000)
>>> journal.base_state()
{'weights': [1.0]}

Large events start a new window sooner, so the journal's memory stays bounded:

>>> journal = Journal(budget_bytes=1000)
>>> journal.start({}, answered={})
>>> journal.record({}, None, "big", origin=8, size=1000)
>>> journal.due()
True
"""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple

# Learned events between two pickles of the state at least; at most, so that a rebuild stays short.
MIN_WINDOW, MAX_WINDOW = 2000, 50_000
# Pickled bytes per event of the window: a pickle costs about as much as learning this many bytes'
# worth of events, so pickling stays at a few percent of the loop (measured in the README).
PICKLE_BYTES_PER_EVENT = 32
# The bytes of events kept in between at most (large events start a new window sooner).
BUDGET_BYTES = 64 * 1024 * 1024


class JournalEntry(NamedTuple):
    """One learned event: what the engine needs to learn it again, and where it came from (the
    caller's, to dead-letter it if its learning has to be undone)."""

    x: dict[str, Any]
    y: Any
    id: str | None
    origin: Any


class Journal:
    """A good state (pickled) and the events learned since, oldest first."""

    def __init__(self, budget_bytes: int = BUDGET_BYTES) -> None:
        self.window = MIN_WINDOW
        self.budget_bytes = budget_bytes
        self._bytes = 0
        self._base: bytes | None = None
        self.answered: dict[str, Any] | None = None  # features the good state gave a finite output for
        self.entries: list[JournalEntry] = []

    def due(self) -> bool:
        """Whether the next good state should be kept (none yet, or the window is full)."""
        return self._base is None or len(self.entries) >= self.window or self._bytes >= self.budget_bytes

    def start(self, state: Any, answered: dict[str, Any]) -> None:
        """Keep ``state`` (a copy: pickled now), which has just answered ``answered``, as the good
        state; no event learned since."""
        self._base = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        self.window = min(MAX_WINDOW, max(MIN_WINDOW, len(self._base) // PICKLE_BYTES_PER_EVENT))
        self.answered = answered
        self.entries, self._bytes = [], 0

    def record(self, x: dict[str, Any], y: Any, event_id: str | None, origin: Any, size: int = 0) -> None:
        """Keep a learned event; ``size``: the bytes it came as, held against the budget."""
        self.entries.append(JournalEntry(x, y, event_id, origin))
        self._bytes += size

    @property
    def started(self) -> bool:
        return self._base is not None

    def base_state(self) -> Any:
        """A fresh copy of the good state."""
        assert self._base is not None, "no good state kept yet"
        return pickle.loads(self._base)

    def clear(self) -> None:
        """Forget everything: the state changed in a way no event reproduces (a manual rollback)."""
        self._base, self.answered, self.entries, self._bytes = None, None, [], 0
