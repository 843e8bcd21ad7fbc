"""Publishing: predictions and dead letters as the sink receives them."""

from __future__ import annotations

import base64
import tempfile
import time

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from connectors.base import Message
from stream.config import Config
from stream.prequential import Engine
from stream.publish import RECORD_OVERHEAD_BYTES, Publisher
from stream.snapshots import SnapshotStore
from stream.status import Counters
from stream.step import RecordStep
from stream.telemetry import LATENCY_BUCKETS, Histogram
from tests.fake_connector import FakeKafka

CONFIG = Config.model_validate({"service": {"max_event_bytes": 10_000}})
STORE = tempfile.mkdtemp(prefix="dead-letter-test-")


def test_the_publisher_sends_the_dead_letter_with_the_key_and_the_reason_as_a_header(caplog):
    kafka = FakeKafka()
    sink = kafka.connector().sink(None)
    counters = Counters()
    publisher = Publisher(CONFIG, sink, counters, Histogram("latency", "latency", LATENCY_BUCKETS))
    for offset in (7, 8):
        publisher.dead_letter(Message("events", 0, offset, b"k", b"{oops"), "malformed JSON: " + "x" * 600)
    sink.flush()
    first, second = kafka.records(CONFIG.kafka.dead_letter_topic)
    assert first.key == b"k" and first.headers == [("error", ("malformed JSON: " + "x" * 600)[:500].encode())]
    assert (
        orjson.loads(first.value)["event"] == "{oops" and orjson.loads(second.value)["source"]["offset"] == 8
    )
    assert counters.dead_letters == 2
    assert any(m.startswith("dead letter events:0@7: malformed JSON: xxx") for m in caplog.messages)


any_text = st.text(st.characters(categories=["L", "N", "P", "Cc", "Cs"]), max_size=600)


@settings(deadline=None)
@example(value=b'{"x": {}, "\\ud800": 1}', reason=None)
@example(value=b'{"x": {"a": 1}, "y": "' + b"\xf0\x9f\x98\x80" * 3000 + b'"}', reason=None)
@example(value=None, reason="empty message (no value)")
@example(value=b"{}", reason="a lone surrogate \ud800 in the reason")
@given(
    value=st.binary(max_size=3000)
    | any_text.map(lambda t: ('{"x": {}, "' + t + '": 1}').encode("utf-8", "surrogatepass")),
    reason=st.none() | any_text,
)
def test_the_publisher_writes_a_dead_letter_for_any_refused_record(value, reason):
    """Whatever the bytes and the reason, the dead letter is written: no encoding error escapes."""
    if reason is None:  # the reason the service would give
        reason = RecordStep(CONFIG)(Engine(CONFIG, SnapshotStore(STORE)), value, "events-0-", 7)
    kafka = FakeKafka()
    sink = kafka.connector().sink(None)
    counters = Counters()
    publisher = Publisher(CONFIG, sink, counters, Histogram("latency", "latency", LATENCY_BUCKETS))
    publisher.dead_letter(Message("events", 0, 7, b"k", value), reason or "accepted, sent anyway")
    sink.flush()
    [written] = kafka.values(CONFIG.kafka.dead_letter_topic)
    record = orjson.loads(written)
    assert record["source"] == {"topic": "events", "partition": 0, "offset": 7}
    assert (value or b"").startswith(base64.b64decode(record["event_base64"]))
    assert len(written) <= CONFIG.service.max_event_bytes
    assert counters.dead_letters == 1


def test_the_publisher_sends_each_prediction_and_times_it_from_the_produce_time():
    kafka = FakeKafka()
    sink = kafka.connector().sink(None)
    counters, latency = Counters(), Histogram("latency", "latency", LATENCY_BUCKETS)
    publisher = Publisher(CONFIG, sink, counters, latency)
    publisher.prediction({"id": "e-0"})  # no produce time known yet: not timed
    publisher.source = Message("events", 0, 1, None, b"{}", int(time.time() * 1000) - 250)
    publisher.prediction({"id": "e-1", "y_pred": True})
    publisher.source = Message("events", 0, 2, None, b"{}")  # produce time unknown: not timed
    publisher.prediction({"id": "e-2", "y_pred": False})
    sink.flush()
    assert kafka.values(CONFIG.kafka.predictions_topic)[1:] == [
        b'{"id":"e-1","y_pred":true}',
        b'{"id":"e-2","y_pred":false}',
    ]
    assert counters.predictions == 3
    assert sum(latency.counts) == 1 and 0.25 <= latency.total < 0.9


def test_only_a_record_without_a_produce_time_goes_untimed_one_produced_at_time_zero_is_timed():
    """Kafka marks a missing timestamp with -1; 0 is a time (1970), however odd."""
    latency = Histogram("latency", "latency", LATENCY_BUCKETS)
    publisher = Publisher(CONFIG, FakeKafka().connector().sink(None), Counters(), latency)
    publisher.source = Message("events", 0, 1, None, b"{}", 0)
    publisher.prediction({"id": "e-1"})
    assert sum(latency.counts) == 1 and latency.total >= time.time() - 60


def test_every_record_fits_its_topic_and_a_prediction_that_cannot_becomes_a_dead_letter():
    kafka = FakeKafka()
    kafka.max_message_bytes = 2_000  # the fake refuses (and fails the test on) any larger record
    sink = kafka.connector().sink(None)
    counters = Counters()
    topics = [CONFIG.kafka.predictions_topic, CONFIG.kafka.dead_letter_topic]
    publisher = Publisher(
        CONFIG, sink, counters, Histogram("latency", "latency", LATENCY_BUCKETS), dict.fromkeys(topics, 2_000)
    )
    event = Message("events", 0, 3, b"key", b'{"x": {"a": 1.0}, "id": "' + b"i" * 5_000 + b'"}')
    publisher.source = event
    publisher.prediction({"id": "i" * 5_000, "y_pred": True})  # its id alone is over the limit
    publisher.dead_letter(event, "a reason " + "r" * 3_000)
    sink.flush()
    assert kafka.values(CONFIG.kafka.predictions_topic) == [] and counters.predictions == 0
    letters = [orjson.loads(value) for value in kafka.values(CONFIG.kafka.dead_letter_topic)]
    assert (
        letters[0]["error"]
        == "its prediction of 5023 bytes does not fit the predictions topic (max.message.bytes 2000)"
    )
    assert [letter["source"]["offset"] for letter in letters] == [3, 3] and counters.dead_letters == 2
    assert all(letter["truncated"] for letter in letters)


def test_the_publishers_outcomes_raise_the_alarm_when_half_the_last_500_events_are_dead_letters():
    kafka = FakeKafka()
    sink = kafka.connector().sink(None)
    publisher = Publisher(CONFIG, sink, Counters(), Histogram("latency", "latency", LATENCY_BUCKETS))
    event = Message("events", 0, 1, None, b"{oops")
    for _ in range(251):
        publisher.prediction({"id": "e"})
    for _ in range(249):
        publisher.dead_letter(event, "malformed JSON: Expecting value")
    assert publisher.watch.alarm is None  # 249 of the last 500
    publisher.dead_letter(event, "malformed JSON: Expecting value")  # 250 of the last 500
    assert (
        publisher.watch.alarm == "250 of the last 500 events were dead letters for one reason: malformed JSON"
    )
    for _ in range(250):
        publisher.prediction({"id": "e"})
    assert publisher.watch.alarm is not None  # the 250 dead letters are the last 500 events' first
    publisher.prediction({"id": "e"})  # 249 of the last 500 again
    assert publisher.watch.alarm is None


def test_a_dead_letter_leaves_room_for_its_key_header_and_the_records_framing():
    kafka = FakeKafka()
    limit = 3_000
    kafka.max_message_bytes = limit - RECORD_OVERHEAD_BYTES  # key, value and headers: what the fake counts
    sink = kafka.connector().sink(None)
    publisher = Publisher(
        CONFIG,
        sink,
        Counters(),
        Histogram("latency", "latency", LATENCY_BUCKETS),
        {CONFIG.kafka.dead_letter_topic: limit},
    )
    key = b"k" * 400
    publisher.dead_letter(Message("events", 0, 3, key, b"v" * 10_000), "too big: " + "r" * 1_000)
    sink.flush()
    [written] = kafka.records(CONFIG.kafka.dead_letter_topic)
    size = len(written.key) + len(written.value) + sum(len(n) + len(v) for n, v in written.headers)
    assert written.key == key and orjson.loads(written.value)["truncated"]
    assert limit - RECORD_OVERHEAD_BYTES - 8 <= size <= limit - RECORD_OVERHEAD_BYTES  # cut to fit, no more


def test_a_prediction_is_sent_up_to_its_topics_limit_less_the_records_framing():
    kafka = FakeKafka()
    sink = kafka.connector().sink(None)
    counters = Counters()
    limit = 2_000
    publisher = Publisher(
        CONFIG,
        sink,
        counters,
        Histogram("latency", "latency", LATENCY_BUCKETS),
        {CONFIG.kafka.predictions_topic: limit},
    )
    publisher.source = Message("events", 0, 5, None, b"{}")
    room = limit - RECORD_OVERHEAD_BYTES
    fits, too_big = ({"id": "i" * (room - len('{"id":""}') + extra)} for extra in (0, 1))
    publisher.prediction(fits)
    publisher.prediction(too_big)
    sink.flush()
    assert [len(value) for value in kafka.values(CONFIG.kafka.predictions_topic)] == [room]
    [letter] = [orjson.loads(value) for value in kafka.values(CONFIG.kafka.dead_letter_topic)]
    assert letter["error"] == (
        f"its prediction of {room + 1} bytes does not fit the predictions topic (max.message.bytes {limit})"
    )
    assert (counters.predictions, counters.dead_letters) == (1, 1)
