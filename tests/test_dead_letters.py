from __future__ import annotations

import base64

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stream.dead_letters import MAX_REASON_CHARS, dead_letter
from stream.events import encode_record

SOURCE = {"topic": "events", "partition": 0, "offset": 1}


def test_a_dead_letter_fits_in_the_size_its_event_was_allowed():
    worst = b"\x00\xff" * 50_000  # control bytes and invalid UTF-8 expand most in JSON
    record = dead_letter("bad", worst, SOURCE, max_bytes=100_000)
    assert len(encode_record(record)) <= 100_000
    assert record["truncated"] and record["size_bytes"] == 100_000
    assert len(base64.b64decode(record["event_base64"])) >= 100_000 // 8


def test_a_small_event_is_kept_whole():
    record = dead_letter("bad", b"{oops", {"position": 3}, 1_000_000)
    assert record["event"] == "{oops" and record["event_base64"] == "e29vcHM="
    assert not record["truncated"] and record["size_bytes"] == 5


def test_a_long_reason_is_cut_and_says_so():
    assert dead_letter("r" * 5000, b"{}", SOURCE, 1_000_000)["error"] == "r" * MAX_REASON_CHARS + "..."
    assert dead_letter("r" * MAX_REASON_CHARS, b"{}", SOURCE, 1_000_000)["error"] == "r" * MAX_REASON_CHARS


def test_a_row_that_was_already_a_mapping_is_kept_as_json():
    record = dead_letter("bad", {"x": "1", "y": "maybe"}, {"position": 3}, 1_000_000)
    assert record["event"] == '{"x": "1", "y": "maybe"}' and not record["truncated"]


def test_an_event_is_kept_whole_up_to_the_exact_limit():
    raw = b"a" * 30_000
    fits_exactly = len(encode_record(dead_letter("bad", raw, SOURCE, 10**9)))
    assert not dead_letter("bad", raw, SOURCE, fits_exactly)["truncated"]
    assert dead_letter("bad", raw, SOURCE, fits_exactly - 1)["truncated"]


def _size_with(record: dict, prefix: bytes) -> int:
    """The encoded size of ``record`` holding ``prefix`` of its event instead."""
    event = {
        "event": prefix.decode("utf-8", "replace"),
        "event_base64": base64.b64encode(prefix).decode(),
        "truncated": len(prefix) < record["size_bytes"],
    }
    return len(encode_record({**record, **event}))


@settings(deadline=None)
@example(raw=b"\x00" * 300_000, reason="\x00" * 5000, max_bytes=1)
@example(raw=b"\xff" * 300_000, reason="bad", max_bytes=40_000)
@example(raw=b"a\xc3\xa9" * 4000, reason="bad", max_bytes=8204)  # cut inside a character
@given(
    raw=st.binary(max_size=20_000)
    | st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=4), st.integers(1, 80_000)),
    reason=st.text(st.characters(categories=["L", "N", "P", "Cc", "Cs"]), max_size=2000),
    max_bytes=st.integers(1, 200_000),
)
def test_a_dead_letter_of_any_bytes_stays_in_bounds_and_keeps_a_prefix(raw, reason, max_bytes):
    record = dead_letter(reason, raw, SOURCE, max_bytes)
    written = encode_record(record)
    kept = base64.b64decode(record["event_base64"])
    # Within the limit, or, when even the reason and source do not fit, with an empty event.
    assert len(written) <= max_bytes or (kept == b"" and _size_with(record, b"") == len(written))
    assert orjson.loads(written) == record  # valid JSON for strict readers too
    assert raw.startswith(kept)
    assert record["event"] == kept.decode("utf-8", "replace")
    assert record["size_bytes"] == len(raw) and record["truncated"] == (len(kept) < len(raw))
    assert len(record["error"]) <= MAX_REASON_CHARS + 3
    # Nearly the longest prefix that fits: a few bytes more would not.
    for longer in range(len(kept) + 1, min(len(kept) + 8, len(raw)) + 1):
        assert _size_with(record, raw[:longer]) > max_bytes


@settings(deadline=None)
@given(raw=st.binary(max_size=300), max_bytes=st.integers(100, 1_200))
def test_the_dead_letter_keeps_the_longest_prefix_that_fits(raw, max_bytes):
    record = dead_letter("bad", raw, SOURCE, max_bytes)
    fitting = [n for n in range(len(raw) + 1) if _size_with(record, raw[:n]) <= max_bytes]
    assert len(base64.b64decode(record["event_base64"])) == max(fitting, default=0)
