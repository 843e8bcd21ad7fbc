from __future__ import annotations

import base64
import math
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import stream.dead_letters
from stream.dead_letters import MAX_REASON_CHARS, DeadLetterWatch, dead_letter
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
    assert record["source"] == {"position": 3} and record["error"] == "bad"
    assert record["event"] == "{oops" and record["event_base64"] == "e29vcHM="
    assert not record["truncated"] and record["size_bytes"] == 5


def test_a_long_reason_is_cut_and_says_so():
    assert dead_letter("r" * 5000, b"{}", SOURCE, 1_000_000)["error"] == "r" * MAX_REASON_CHARS + "..."
    assert dead_letter("r" * MAX_REASON_CHARS, b"{}", SOURCE, 1_000_000)["error"] == "r" * MAX_REASON_CHARS


def test_a_lone_surrogate_in_the_reason_is_kept_escaped():
    record = dead_letter("bad key '\ud800'", b"{}", SOURCE, 1_000_000)
    assert record["error"] == "bad key '\\ud800'"
    assert orjson.loads(encode_record(record))["error"] == "bad key '\\ud800'"


def test_a_row_that_was_already_a_mapping_is_kept_as_json():
    record = dead_letter("bad", {"x": "1", "y": "maybe"}, {"position": 3}, 1_000_000)
    assert record["event"] == '{"x": "1", "y": "maybe"}' and not record["truncated"]


def test_an_event_is_kept_whole_up_to_the_exact_limit():
    raw = b"a" * 30_000
    fits_exactly = len(encode_record(dead_letter("bad", raw, SOURCE, 10**9)))
    assert not dead_letter("bad", raw, SOURCE, fits_exactly)["truncated"]
    assert dead_letter("bad", raw, SOURCE, fits_exactly - 1)["truncated"]


def test_a_dead_letter_of_a_large_event_is_sized_with_a_logarithmic_number_of_encodings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding the longest prefix that fits bisects: encoding every prefix would cost a full
    encoding of up to ``max_bytes`` per byte kept."""
    raw = b"a" * 1_000_000
    bound = 2 * math.log2(len(raw)) + 10
    encodings = 0

    def counting(record: dict[str, Any]) -> bytes:
        nonlocal encodings
        encodings += 1
        assert encodings <= bound, f"more than {bound:.0f} encodings of one dead letter"
        return encode_record(record)

    monkeypatch.setattr(stream.dead_letters, "encode_record", counting)
    record = dead_letter("too big", raw, SOURCE, max_bytes=100_000)
    assert record["truncated"] and len(encode_record(record)) <= 100_000


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


# -- the watch: most recent events dead letters for one reason --------------------------------------


def _watch_after(outcomes: list[str | None], window: int = 4, share: float = 0.5) -> DeadLetterWatch:
    watch = DeadLetterWatch(window=window, share=share)
    for reason in outcomes:
        watch.outcome(reason)
    return watch


def test_the_alarm_rises_when_one_reason_reaches_the_share_of_a_full_window():
    alarm = "2 of the last 4 events were dead letters for one reason: missing required field 'x'"
    reasons = ["missing required field 'x'", "missing required field 'x': in event e-7"]
    assert _watch_after([None, None, *reasons]).alarm == alarm  # 2 of 4: the share exactly
    assert _watch_after([None, None, None, reasons[0]]).alarm is None  # 1 of 4: below it
    assert _watch_after(reasons * 2).alarm == alarm.replace("2 of", "4 of")
    # Not before a window of events was seen, however many of those were dead letters.
    assert _watch_after(reasons[:1] * 3).alarm is None
    # Reasons that differ before their detail are different troubles.
    assert _watch_after([None, None, "unknown field(s): 'a'", "malformed JSON: x"]).alarm is None
    assert _watch_after(["y" * 300] * 4).alarm.endswith("one reason: " + "y" * 200)  # a bounded name


def test_a_share_below_one_event_in_the_window_still_takes_one_dead_letter():
    assert _watch_after([None, None, None, "bad"], share=0.01).alarm == (
        "1 of the last 4 events were dead letters for one reason: bad"
    )


def test_the_alarm_ends_when_the_dead_letters_leave_the_window():
    watch = _watch_after([None, None, "bad: 1", "bad: 2"])
    still_on = []
    for _ in range(3):
        watch.outcome(None)
        still_on.append(watch.alarm is not None)
    assert still_on == [True, True, False]  # the first dead letter was 4 outcomes ago at the third
    watch.outcome("bad: 3")  # one in the last 4 again: no alarm
    assert watch.alarm is None


def test_the_alarm_holds_while_the_share_does_and_counts_only_the_window():
    watch = _watch_after(["bad"] * 4, share=0.75)
    assert watch.alarm == "4 of the last 4 events were dead letters for one reason: bad"
    watch.outcome(None)  # 3 of the last 4: still the share
    assert watch.alarm == "4 of the last 4 events were dead letters for one reason: bad"
    watch.outcome("bad")  # 3 of the last 4 again, the count said anew
    assert watch.alarm == "3 of the last 4 events were dead letters for one reason: bad"
    watch.outcome(None)  # 2 of the last 4: below it
    assert watch.alarm is None
    # A dead letter of the window's first outcome has left it when the next one comes.
    assert _watch_after(["bad", None, None, None, "bad"], share=0.5).alarm is None
