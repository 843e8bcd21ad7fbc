"""Dead letters: what is kept of an event that could not be used, and why.

The record holds the reason, where the event came from, and the original bytes (base64, so
garbage survives the trip exactly; plus a text rendering for people). Encoded, it stays within
``max_bytes`` (the size its event was allowed) with the longest prefix of the original that fits;
when ``max_bytes`` is too small even for the reason and source, the record has those and an empty
event. A reason longer than :data:`MAX_REASON_CHARS` is cut.

>>> source = {"topic": "events", "partition": 0, "offset": 7}
>>> record = dead_letter("malformed JSON", b"{oops", source, max_bytes=1000)
>>> record["error"], record["source"]["offset"], record["event"], record["event_base64"]
('malformed JSON', 7, '{oops', 'e29vcHM=')
>>> record = dead_letter("too big", b"a" * 1_000_000, source, max_bytes=100_000)
>>> record["size_bytes"], record["truncated"], len(encode_record(record)) <= 100_000
(1000000, True, True)
"""

from __future__ import annotations

import base64
import json
from collections import Counter, deque
from typing import Any

from stream.events import encode_record

MAX_REASON_CHARS = 1000


def dead_letter(
    reason: str, raw: bytes | dict[str, Any] | None, source: dict[str, Any], max_bytes: int
) -> dict[str, Any]:
    """The dead-letter record of ``raw``, refused for ``reason``, read from ``source``."""
    data = json.dumps(raw).encode() if isinstance(raw, dict) else (raw or b"")
    reason = reason.encode("utf-8", "backslashreplace").decode()  # a lone surrogate would be bad JSON
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + "..."

    def record(kept: bytes) -> dict[str, Any]:
        return {
            "error": reason,
            "source": source,
            "event": kept.decode("utf-8", "replace"),
            "event_base64": base64.b64encode(kept).decode(),
            "size_bytes": len(data),
            "truncated": len(kept) < len(data),
        }

    def fits(length: int) -> bool:
        return len(encode_record(record(data[:length]))) <= max_bytes

    # The encoded size grows with the prefix, but for a byte or two: completing a character
    # replaces the 3-byte U+FFFD of its cut-off start. So bisect, then look a few bytes further.
    longest, too_long = 0, min(len(data), max_bytes) + 1
    while too_long - longest > 1:
        middle = (longest + too_long) // 2
        if fits(middle):
            longest = middle
        else:
            too_long = middle
    longest = max((n for n in range(longest, min(longest + 4, len(data)) + 1) if fits(n)), default=0)
    return record(data[:longest])


class DeadLetterWatch:
    """Tells when most recent events end as dead letters for one reason: then it is not those
    events' fault but a change upstream (a schema, a producer) or a broken model, and someone
    should know.

    >>> watch = DeadLetterWatch(window=4, share=0.5)
    >>> for reason in [None, None, "missing required field 'x'", "missing required field 'x'"]:
    ...     watch.outcome(reason)
    >>> watch.alarm
    "2 of the last 4 events were dead letters for one reason: missing required field 'x'"
    >>> for _ in range(3):
    ...     watch.outcome(None)
    >>> watch.alarm is None
    True
    """

    def __init__(self, window: int = 500, share: float = 0.5) -> None:
        self.window = window
        self.threshold = max(1, int(window * share))
        self._seen = 0  # outcomes so far
        self._letters: deque[tuple[int, str]] = deque()  # (outcome number, kind) of recent dead letters
        self._counts: Counter[str] = Counter()
        self.alarm: str | None = None

    def outcome(self, reason: str | None) -> None:
        """One event's outcome: ``None`` for a prediction, else its dead letter's reason. A
        prediction costs a count (and, while the alarm is on, a look at whether it is over)."""
        self._seen += 1
        if reason is None:
            if self.alarm is not None:
                self._forget_old()
                if not self._counts or max(self._counts.values()) < self.threshold:
                    self.alarm = None
            return
        kind = reason.partition(":")[0][:200]
        self._letters.append((self._seen, kind))
        self._counts[kind] += 1
        self._forget_old()
        count = self._counts[kind]
        if self._seen >= self.window and count >= self.threshold:
            self.alarm = f"{count} of the last {self.window} events were dead letters for one reason: {kind}"

    def _forget_old(self) -> None:
        letters, oldest = self._letters, self._seen - self.window
        while letters and letters[0][0] <= oldest:
            _, kind = letters.popleft()
            self._counts[kind] -= 1
            if not self._counts[kind]:
                del self._counts[kind]
