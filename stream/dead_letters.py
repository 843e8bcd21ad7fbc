"""Dead letters: what is kept of an event that could not be used, and why.

The record holds the reason, where the event came from, and the original bytes (base64, so
garbage survives the trip exactly; plus a text rendering for people). Both copies together stay
under ``max_bytes``: the original is cut at an eighth of it, since base64 adds a third and JSON
escaping can make one byte six characters (``\u0000``), so a dead letter fits where its event did.

>>> source = {"topic": "events", "partition": 0, "offset": 7}
>>> record = dead_letter("malformed JSON", b"{oops", source, max_bytes=1000)
>>> record["error"], record["source"]["offset"], record["event"], record["event_base64"]
('malformed JSON', 7, '{oops', 'e29vcHM=')
"""

from __future__ import annotations

import base64
import json
from typing import Any


def dead_letter(
    reason: str, raw: bytes | dict[str, Any] | None, source: dict[str, Any], max_bytes: int
) -> dict[str, Any]:
    data = json.dumps(raw).encode() if isinstance(raw, dict) else (raw or b"")
    kept = data[: max_bytes // 8]
    return {
        "error": reason,
        "source": source,
        "event": kept.decode("utf-8", "replace"),
        "event_base64": base64.b64encode(kept).decode(),
        "size_bytes": len(data),
        "truncated": len(kept) < len(data),
    }
