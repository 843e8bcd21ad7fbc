from __future__ import annotations

import json

from stream.dead_letters import dead_letter


def test_a_dead_letter_fits_in_the_size_its_event_was_allowed():
    worst = b"\x00\xff" * 50_000  # control bytes and invalid UTF-8 expand most in JSON
    record = dead_letter("bad", worst, {"topic": "t", "partition": 0, "offset": 1}, max_bytes=100_000)
    assert len(json.dumps(record).encode()) <= 100_000
    assert record["truncated"] and record["size_bytes"] == 100_000


def test_a_small_event_is_kept_whole():
    record = dead_letter("bad", b"{oops", {"position": 3}, 1_000_000)
    assert record["event"] == "{oops" and not record["truncated"]
