"""Delayed labels: events wait for their label, labels for their event, each within bounds.

An event that comes without ``y`` is predicted and published at once, then waits here under its
id: its features, the prediction made at event time (the metrics and the drift monitor are fed
that one when the label comes, not a new one), when it came. Its label, when it comes, is joined
with it and the pair is learned. A label that comes before its event is held until the event
comes; the event is then learned at once, as if it had carried its label.

Bounded both ways (:class:`~stream.config.LabelsConfig`): an event waits at most
``labels.max_wait_seconds`` (by the caller's clock) and ``labels.max_wait_events`` later events,
then expires unlearned; at most ``labels.max_pending`` events wait, and a new one beyond that
evicts the oldest. Held labels have the same time and event bounds, and ``labels.max_held``.

Every event and every label ends in exactly one counted outcome (:class:`JoinCounts`):

- an event that waits is **joined** (learned with its label), **expired** or **evicted**
  (unlearned: its prediction stands), or **refused** when the model cannot learn it with its
  label (the label is then a dead letter with the model's reason);
- a label is **joined**, a **duplicate** (its event was already learned: counted, not learned
  again), **invalid** (it breaks the label contract), or an **orphan** (its event expired before
  it, was refused, or no event with its id came within the bounds); invalid and orphan labels are
  dead letters with the reason (orphans are handed over by :meth:`Join.take_orphans`).

Ids are remembered for ``max_wait`` after their event was learned or expired, which is how a
late label is told from a duplicate and from an unknown id.

>>> from stream.config import LabelsConfig
>>> join = Join(LabelsConfig(max_wait_events=2))
>>> join.event_came("e-1", now=0.0) is None  # no label came first: predict, publish, then wait
True
>>> join.wait("e-1", {"a": 1.0}, {"y_pred": True}, now=0.0)
>>> join.label_came("e-1", True, now=1.0).prediction  # learn x with y and this prediction
{'y_pred': True}
>>> join.joined("e-1", now=1.0, event_time=0.0, label_time=1.0)
>>> join.label_came("e-1", True, now=2.0), join.counts.duplicates  # a second label for e-1
(None, 1)
>>> join.label_came("e-9", False, now=3.0, origin="label 9")  # its event has not come (yet)
>>> join.event_came("e-9", now=4.0).y  # learn the event at once, with this label
False
>>> join.joined("e-9", now=4.0, event_time=4.0, label_time=3.0)
>>> join.wait("e-2", {"a": 2.0}, {"y_pred": False}, now=5.0)
>>> for n in range(3):
...     _ = join.event_came(f"other-{n}", now=6.0)
>>> join.counts.expired, join.waiting
(1, 0)
>>> join.label_came("e-2", True, now=7.0, origin="label 2"), join.take_orphans()
(None, [('label 2', "the event 'e-2' expired unlearned before its label came")])
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from pydantic import BaseModel

from stream.config import LabelsConfig


class WaitingEvent(NamedTuple):
    """An event waiting for its label."""

    x: dict[str, Any]
    prediction: dict[str, Any]
    since: float  # the clock when it came
    seen: int  # how many events had come before it
    ts: float | None  # its event time (epoch seconds), for the label delay


class HeldLabel(NamedTuple):
    """A label waiting for its event."""

    y: Any
    since: float
    seen: int
    ts: float | None
    origin: Any


@dataclass
class JoinCounts:
    """The outcomes so far (see the module docstring)."""

    joined: int = 0
    expired: int = 0
    evicted: int = 0
    refused: int = 0
    duplicates: int = 0
    orphans: int = 0
    invalid_labels: int = 0  # labels refused as they came (dead letters with the reason)
    delays: int = 0  # delays observed (one per joined label)
    delay_seconds_total: float = 0.0
    delay_seconds_max: float = 0.0


class JoinSummary(BaseModel):
    """What the join holds and has done (``/api/stats``, a replay's summary)."""

    waiting: int
    held: int
    joined: int
    expired: int
    evicted: int
    refused: int
    duplicates: int
    orphans: int
    invalid_labels: int
    mean_label_delay_seconds: float | None
    max_label_delay_seconds: float | None


LEARNED, EXPIRED, REFUSED = "learned", "expired", "refused"
# How the entries of a join are keyed in a changelog: the kind, a slash, the event id.
WAITING, HELD, RECENT = "w/", "h/", "r/"
# The changelog key of the counters and the event count.
METER = "meter"
# The arrival orders below keep entries no longer current until they come up; past twice the
# current entries (and this many), an order is rebuilt from its dict, whose order is arrival's.
COMPACT_SLACK = 1024


def _take_oldest(
    order: deque[tuple[str, float, int]],
    entries: dict[str, Any],
    due: Callable[[float, int], bool],
) -> tuple[str, Any] | None:
    """The oldest entry still current, taken out, if ``due(since, seen)`` for it; entries of the
    order no longer current (taken, or replaced under their id) are dropped on the way."""
    while order and due(order[0][1], order[0][2]):
        event_id, since, seen = order.popleft()
        current = entries.get(event_id)
        if current is not None and current.since == since and current.seen == seen:
            del entries[event_id]
            return event_id, current
    return None


class Join:
    """The events waiting for labels and the labels waiting for events of one partition."""

    def __init__(
        self,
        config: LabelsConfig,
        on_delay: Callable[[float], None] | None = None,
        track_changes: bool = False,
    ) -> None:
        self.config = config
        self.on_delay = on_delay  # told each joined label's delay (a histogram's observe)
        # With track_changes, the keys changed since the last take_changes(): what a changelog
        # needs to bring a restored join to this one (a key changed twice is written once).
        self._changed: set[str] | None = set() if track_changes else None
        self.counts = JoinCounts()
        self.events_seen = 0
        self._waiting: dict[str, WaitingEvent] = {}
        self._held: dict[str, HeldLabel] = {}
        self._recent: dict[str, tuple[str, float]] = {}  # id -> (LEARNED or EXPIRED, when), a while
        # Arrival order, oldest first, to expire from the front in O(1) (a dict's first key is not
        # O(1) after many deletions); an entry no longer current is skipped when it comes up.
        self._waiting_order: deque[tuple[str, float, int]] = deque()
        self._held_order: deque[tuple[str, float, int]] = deque()
        self._recent_order: deque[tuple[str, float]] = deque()
        self._orphans: list[tuple[Any, str]] = []

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def held(self) -> int:
        return len(self._held)

    def is_waiting(self, event_id: str) -> bool:
        return event_id in self._waiting

    # -- events ----------------------------------------------------------------------------

    def event_came(self, event_id: str, now: float) -> HeldLabel | None:
        """Count an event that came (for ``max_wait_events``), expire what waited too long, and
        hand over the label held for it if its label came first: the caller learns the event at
        once with it, then calls :meth:`joined` (or :meth:`orphan` if the event is refused)."""
        self.events_seen += 1
        self.expire(now)
        held = self._held.pop(event_id, None)
        if held is not None:
            self._touch(HELD, event_id)
        return held

    def wait(
        self,
        event_id: str,
        x: dict[str, Any],
        prediction: dict[str, Any],
        now: float,
        ts: float | None = None,
    ) -> None:
        """Keep a predicted event until its label comes (the caller checked it is not waiting)."""
        if len(self._waiting) >= self.config.max_pending:
            self._evict_oldest_event(now)
        self._waiting[event_id] = WaitingEvent(x, prediction, now, self.events_seen, ts)
        self._touch(WAITING, event_id)
        self._waiting_order.append((event_id, now, self.events_seen))
        if len(self._waiting_order) > 2 * len(self._waiting) + COMPACT_SLACK:
            self._waiting_order = deque(
                (key, entry.since, entry.seen) for key, entry in self._waiting.items()
            )

    def learned_at_once(self, event_id: str, now: float) -> None:
        """An event that carried its label was learned: a label for it later is a duplicate."""
        self._remember(event_id, LEARNED, now)

    # -- labels ----------------------------------------------------------------------------

    def label_came(
        self, event_id: str, y: Any, now: float, origin: Any = None, ts: float | None = None
    ) -> WaitingEvent | None:
        """The event a label is for, if it waits: the caller learns the pair, then calls
        :meth:`joined` (or :meth:`refused`). Otherwise the label is counted a duplicate (its event
        was learned), an orphan (its event expired), or held for its event (a second label
        for an id already held is a duplicate); None."""
        self.expire(now)
        waiting = self._waiting.pop(event_id, None)
        if waiting is not None:
            self._touch(WAITING, event_id)
            return waiting
        outcome = self._recent.get(event_id)
        if outcome is not None and outcome[0] == LEARNED:
            self.counts.duplicates += 1
        elif outcome is not None and outcome[0] == REFUSED:
            self.orphan(origin, f"the model refused to learn the event {event_id!r} with its label")
        elif outcome is not None:
            self.orphan(origin, f"the event {event_id!r} expired unlearned before its label came")
        elif event_id in self._held:  # the first label held for an id is the one learned
            self.counts.duplicates += 1
        else:
            if len(self._held) >= self.config.max_held:
                self._evict_oldest_label()
            self._held[event_id] = HeldLabel(y, now, self.events_seen, ts, origin)
            self._touch(HELD, event_id)
            self._held_order.append((event_id, now, self.events_seen))
            if len(self._held_order) > 2 * len(self._held) + COMPACT_SLACK:
                self._held_order = deque((key, entry.since, entry.seen) for key, entry in self._held.items())
        return None

    def joined(self, event_id: str, now: float, event_time: float, label_time: float) -> None:
        """An event was learned with its label (the one it waited for, or the one held for it).
        The times are the messages' ``ts`` where known, else when they came; the delay is
        ``label_time - event_time``, 0 for a label that came first."""
        counts = self.counts
        counts.joined += 1
        self._remember(event_id, LEARNED, now)
        delay = max(0.0, label_time - event_time)
        counts.delays += 1
        counts.delay_seconds_total += delay
        counts.delay_seconds_max = max(counts.delay_seconds_max, delay)
        if self.on_delay is not None:
            self.on_delay(delay)

    def orphan(self, origin: Any, reason: str) -> None:
        """A label that will never be learned: a dead letter, handed over by :meth:`take_orphans`."""
        self.counts.orphans += 1
        self._orphans.append((origin, reason))

    def refused(self, event_id: str, now: float) -> None:
        """A joined pair the model refused to learn (its label is the caller's dead letter): a
        later label for the event is an orphan too."""
        self.counts.refused += 1
        self._remember(event_id, REFUSED, now)

    def take_orphans(self) -> list[tuple[Any, str]]:
        """The ``(origin, reason)`` of the labels found orphans since the last call."""
        found, self._orphans = self._orphans, []
        return found

    def close(self) -> None:
        """No event will come any more (a replay's end): every held label is an orphan."""
        for event_id, held in self._held.items():
            self.orphan(held.origin, f"no event with id {event_id!r} came")
            self._touch(HELD, event_id)
        self._held.clear()
        self._held_order.clear()

    # -- bounds ----------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Expire events and labels that waited past ``max_wait_seconds`` or ``max_wait_events``."""
        max_seconds, max_events = self.config.max_wait_seconds, self.config.max_wait_events
        oldest_time = now - max_seconds if max_seconds is not None else None
        oldest_seen = self.events_seen - max_events if max_events is not None else None

        def too_old(since: float, seen: int) -> bool:
            return (oldest_time is not None and since < oldest_time) or (
                oldest_seen is not None and seen < oldest_seen
            )

        while (found := _take_oldest(self._waiting_order, self._waiting, too_old)) is not None:
            self.counts.expired += 1
            self._touch(WAITING, found[0])
            self._remember(found[0], EXPIRED, now)
        while (found := _take_oldest(self._held_order, self._held, too_old)) is not None:
            event_id, label = found
            self._touch(HELD, event_id)
            self.orphan(label.origin, f"no event with id {event_id!r} came within {self._bounds()}")
        while self._recent_order and oldest_time is not None and self._recent_order[0][1] < oldest_time:
            self._forget_oldest()

    def _evict_oldest_event(self, now: float) -> None:
        found = _take_oldest(self._waiting_order, self._waiting, lambda since, seen: True)
        if found is not None:
            self.counts.evicted += 1
            self._touch(WAITING, found[0])
            self._remember(found[0], EXPIRED, now)

    def _evict_oldest_label(self) -> None:
        found = _take_oldest(self._held_order, self._held, lambda since, seen: True)
        if found is not None:
            self._touch(HELD, found[0])
            self.orphan(
                found[1].origin,
                f"labels.max_held={self.config.max_held} labels were waiting for their events; "
                "this one, the oldest, was let go",
            )

    def _bounds(self) -> str:
        bounds = []
        if self.config.max_wait_seconds is not None:
            bounds.append(f"labels.max_wait_seconds={self.config.max_wait_seconds:g}")
        if self.config.max_wait_events is not None:
            bounds.append(f"labels.max_wait_events={self.config.max_wait_events}")
        return " and ".join(bounds)

    def _remember(self, event_id: str, outcome: str, now: float) -> None:
        self._recent.pop(event_id, None)  # to the end: the dict's order stays the order of time
        self._recent[event_id] = (outcome, now)
        self._touch(RECENT, event_id)
        self._recent_order.append((event_id, now))
        if len(self._recent_order) > 2 * len(self._recent) + COMPACT_SLACK:
            self._recent_order = deque((key, when) for key, (_, when) in self._recent.items())
        if len(self._recent) > self.config.max_pending:  # bounded however long max_wait is
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        event_id, when = self._recent_order.popleft()
        current = self._recent.get(event_id)
        if current is not None and current[1] == when:
            del self._recent[event_id]
            self._touch(RECENT, event_id)

    # -- a changelog of the join -----------------------------------------------------------

    def _touch(self, kind: str, event_id: str) -> None:
        if self._changed is not None:
            self._changed.add(kind + event_id)

    @property
    def changed(self) -> bool:
        """Whether anything changed since the last :meth:`take_changes`."""
        return bool(self._changed)

    def take_changes(self) -> list[tuple[str, Any]]:
        """``(key, entry)`` for each key changed since the last call (``entry`` None: gone), then
        the counters under :data:`METER`: enough to bring a join restored from them to this one."""
        assert self._changed is not None, "built without track_changes"
        tables: dict[str, dict[str, Any]] = {WAITING: self._waiting, HELD: self._held, RECENT: self._recent}
        changes = [(key, tables[key[:2]].get(key[2:])) for key in self._changed]
        self._changed = set()
        changes.append((METER, {"events_seen": self.events_seen, **asdict(self.counts)}))
        return changes

    def restore(self, entries: Iterable[tuple[str, Any]]) -> None:
        """Bring this (new) join to the state whose changes are ``entries``, oldest first; the
        latest entry of a key counts."""
        latest: dict[str, Any] = {}
        for key, entry in entries:
            latest.pop(key, None)
            latest[key] = entry
        meter = latest.pop(METER, None)
        if meter is not None:
            self.events_seen = meter.pop("events_seen")
            self.counts = JoinCounts(**meter)
        tables: dict[str, dict[str, Any]] = {WAITING: self._waiting, HELD: self._held, RECENT: self._recent}
        for key, entry in latest.items():
            if entry is not None:
                tables[key[:2]][key[2:]] = entry
        for table in (self._waiting, self._held):  # in the order they came, for expiry
            ordered = sorted(table.items(), key=lambda item: (item[1].seen, item[1].since))
            table.clear()
            table.update(ordered)
        ordered_recent = sorted(self._recent.items(), key=lambda item: item[1][1])
        self._recent.clear()
        self._recent.update(ordered_recent)
        self._waiting_order = deque((key, entry.since, entry.seen) for key, entry in self._waiting.items())
        self._held_order = deque((key, entry.since, entry.seen) for key, entry in self._held.items())
        self._recent_order = deque((key, when) for key, (_, when) in self._recent.items())

    def summary(self) -> JoinSummary:
        counts = self.counts
        return JoinSummary(
            waiting=self.waiting,
            held=self.held,
            joined=counts.joined,
            expired=counts.expired,
            evicted=counts.evicted,
            refused=counts.refused,
            duplicates=counts.duplicates,
            orphans=counts.orphans,
            invalid_labels=counts.invalid_labels,
            mean_label_delay_seconds=counts.delay_seconds_total / counts.delays if counts.delays else None,
            max_label_delay_seconds=counts.delay_seconds_max if counts.delays else None,
        )
