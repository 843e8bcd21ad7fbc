"""Dead letters: what is kept of an event that could not be used, and why.

The record holds the reason, where the event came from, and the original bytes (base64, so
garbage survives the trip exactly; plus a text rendering for people). Encoded, it stays within
``max_bytes`` (the size its event was allowed), or within :data:`MIN_DEAD_LETTER_BYTES` when
``max_bytes`` is smaller than the reason and source need: the longest prefix of the original that
fits is kept, and a reason longer than :data:`MAX_REASON_CHARS` is cut.

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
from typing import Any

from stream.events import encode_record

MAX_REASON_CHARS = 1000
# Room for a reason of MAX_REASON_CHARS (six bytes each at worst, once escaped) and the source.
MIN_DEAD_LETTER_BYTES = 8192


def dead_letter(
    reason: str, raw: bytes | dict[str, Any] | None, source: dict[str, Any], max_bytes: int
) -> dict[str, Any]:
    """The dead-letter record of ``raw``, refused for ``reason``, read from ``source``."""
    data = json.dumps(raw).encode() if isinstance(raw, dict) else (raw or b"")
    reason = reason.encode("utf-8", "backslashreplace").decode()  # a lone surrogate would be bad JSON
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + "..."
    budget = max(max_bytes, MIN_DEAD_LETTER_BYTES)

    def record(kept: bytes) -> dict[str, Any]:
        return {
            "error": reason,
            "source": source,
            "event": kept.decode("utf-8", "replace"),
            "event_base64": base64.b64encode(kept).decode(),
            "size_bytes": len(data),
            "truncated": len(kept) < len(data),
        }

    # The longest prefix that fits: its encoded size grows with its length, so bisect.
    fits, too_long = 0, min(len(data), budget) + 1
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if len(encode_record(record(data[:middle]))) <= budget:
            fits = middle
        else:
            too_long = middle
    return record(data[:fits])
