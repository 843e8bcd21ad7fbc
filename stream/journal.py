"""The journal: what an engine learned since a state known to be good, so learning can be undone.

Learning one event is all or nothing, and no single event may leave a model broken. River models
cannot undo a ``learn_one``, and copying the model before every event would cost more than
learning it. So the engine keeps, in memory, a pickled state from before some recent event (taken
every :data:`WINDOW` events, right after a prediction succeeded: a state that answers) and the
events it learned since, each with the prediction it was learned with. Any later state is that
state plus those events, learned again: learning is deterministic. Undoing an event is rebuilding
without it; the cost is paid only when something went wrong.

>>> journal = Journal(window=2)
>>> journal.due()
True
>>> journal.start({"weights": [1.0]}, answered={"a": 1.0})
>>> journal.record("e-1", {"y_pred": True}, origin=7)
>>> journal.due(), [entry.origin for entry in journal.entries]
(False, [7])
>>> journal.base_state()
{'weights': [1.0]}

Large events start a new window sooner, so the journal's memory stays bounded:

>>> journal = Journal(window=100, budget_bytes=1000)
>>> journal.start({}, answered={})
>>> journal.record("big", {}, origin=8, size=1000)
>>> journal.due()
True
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

# Learned events between two pickles of the state: the pickle costs about as much as learning a
# few events, so this keeps it to a small share of the loop; a rebuild learns this many again at most.
WINDOW = 2000
# And at most this many bytes of events kept in between (large events start a new window sooner).
BUDGET_BYTES = 64 * 1024 * 1024


@dataclass(slots=True)
class JournalEntry:
    """One learned event, the prediction it was learned with, and where it came from (the
    caller's, to dead-letter it if its learning has to be undone)."""

    event: Any
    prediction: dict[str, Any]
    origin: Any


class Journal:
    """A good state (pickled) and the events learned since, oldest first."""

    def __init__(self, window: int = WINDOW, budget_bytes: int = BUDGET_BYTES) -> None:
        self.window = window
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
        self.answered = answered
        self.entries, self._bytes = [], 0

    def record(self, event: Any, prediction: dict[str, Any], origin: Any, size: int = 0) -> None:
        """Keep a learned event; ``size``: the bytes it came as, held against the budget."""
        self.entries.append(JournalEntry(event, prediction, origin))
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
