"""Delayed labels: a partition's events and labels taken in the order they were produced.

A consumer returns runs of one partition, then of another. Live, the runs are short and the
order barely matters; catching up on a backlog, a run of thousands of events would be predicted
before labels produced before them are learned (and the model would predict as if those labels
had not come yet). So the service holds the records of partition p of both topics here and takes
them in the order of their produce times (a label first at equal times), the head of one topic
only when the other has a record to compare it with, is caught up (nothing more to read), or
has shown no record for ``labels.order_wait_seconds``. A topic with ``max_held`` records held is
paused until they are taken. Kafka Streams orders a task's partitions the same way
(``max.task.idle.ms``).

Which order the records are processed in does not touch the guarantee: a record is claimed when
it is processed, and the examples topic keeps the order of learning.

>>> from connectors.base import Message
>>> order = TimeOrder(order_wait_seconds=1.0, now=0.0)
>>> order.add(Message("events", 0, 0, None, b"e0", 100), is_label=False, now=0.0)
>>> order.add(Message("events", 0, 1, None, b"e1", 300), is_label=False, now=0.0)
>>> [m.value for m in order.take(now=0.0, caught_up=lambda is_label: False)]  # no label to compare yet
[]
>>> order.add(Message("labels", 0, 0, None, b"l0", 200), is_label=True, now=0.0)
>>> [m.value for m in order.take(now=0.0, caught_up=lambda is_label: False)]
[b'e0', b'l0']
>>> [m.value for m in order.take(now=0.0, caught_up=lambda is_label: is_label)]  # labels caught up
[b'e1']
>>> order.add(Message("events", 0, 2, None, b"e2", 400), is_label=False, now=0.5)
>>> [m.value for m in order.take(now=1.2, caught_up=lambda is_label: False)]  # no label for 1.2 s
[b'e2']
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from connectors.base import Message


class TimeOrder:
    """The held records of one partition of events and its partition of labels."""

    def __init__(self, order_wait_seconds: float, now: float) -> None:
        self.order_wait_seconds = order_wait_seconds
        self.events: deque[Message] = deque()
        self.labels: deque[Message] = deque()
        self._last_added = {False: now, True: now}  # when each topic last showed a record

    def __len__(self) -> int:
        return len(self.events) + len(self.labels)

    def held(self, is_label: bool) -> int:
        return len(self.labels if is_label else self.events)

    def add(self, message: Message, is_label: bool, now: float) -> None:
        (self.labels if is_label else self.events).append(message)
        self._last_added[is_label] = now

    def take(self, now: float, caught_up: Callable[[bool], bool]) -> Iterator[Message]:
        """The records that can go now, in order; ``caught_up(is_label)``: whether that topic's
        partition has nothing more to read."""
        events, labels = self.events, self.labels
        while events or labels:
            if events and labels:
                take_label = labels[0].timestamp_ms <= events[0].timestamp_ms
            elif events:
                if not self._may_go_alone(False, now, caught_up):
                    return
                take_label = False
            else:
                if not self._may_go_alone(True, now, caught_up):
                    return
                take_label = True
            yield (labels if take_label else events).popleft()

    def _may_go_alone(self, is_label: bool, now: float, caught_up: Callable[[bool], bool]) -> bool:
        head = (self.labels if is_label else self.events)[0]
        return (
            head.timestamp_ms < 0  # no produce time to order by
            or caught_up(not is_label)
            or now - self._last_added[not is_label] >= self.order_wait_seconds  # the other is quiet
        )

    def clear(self) -> None:
        """Forget what is held (the consumer is repositioned: it will be read again)."""
        self.events.clear()
        self.labels.clear()
