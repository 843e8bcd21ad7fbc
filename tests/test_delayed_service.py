"""Delayed labels in the service (labels on their own topic), exactly once across crashes.

On the in-memory Kafka that dies at any client call (tests/fake_connector.py): each case kills
the service at one step, restarts it, lets it finish, and checks what a read_committed reader
sees. Reading two partitions again after a crash does not give back the order their records were
read in, so the order of learning is the examples topic's (stream/changelog.py); the checks are
against it:

- every event's prediction is published exactly once, and each example is learned once (no
  label learned twice or lost);
- the final model equals a fresh model that learned the examples topic in its order, byte for
  byte (model, metrics, drift detector), and so do the predictions: an event learned with its
  label at once was predicted by the state before that example; a joined one's prediction is the
  one its example keeps.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

import pytest

from connectors.base import Message
from stream.changelog import decode_example
from stream.checkpoint import Checkpointer, OwnedPartition, PartitionId, restore_point
from stream.config import Config
from stream.events import encode_record
from stream.order import TimeOrder
from stream.prequential import Engine
from stream.service import Service
from stream.snapshots import SnapshotStore
from stream.status import Counters
from tests.fake_connector import FakeKafka, FakeSource, Killed, Record
from tests.kafka_helpers import drifting_events
from tests.model_equality import canonical_pickle


def delayed_stream(count: int, seed: int, labelled_at_once: float = 0.3) -> tuple[list[dict], list[dict]]:
    """Events (some with their label) and, for the others, labels in roughly the same order."""
    rng = random.Random(seed)
    events, labels = [], []
    for n, event in enumerate(drifting_events(count, seed=seed)):
        event = {**event, "id": f"e{n}"}
        if rng.random() >= labelled_at_once:
            labels.append({"id": event["id"], "y": event.pop("y")})
        events.append(event)
    rng.shuffle(labels[: len(labels) // 10])  # a few labels come well before or after their event
    return events, labels


EVENTS, LABELS = delayed_stream(900, seed=5)
CRASH_STEPS = [
    ("poll", 4), ("send", 1), ("send", 700), ("send", 1_500), ("begin", 3), ("transaction.commit", 2),
    ("transaction.committed", 3), ("snapshot.write", 2), ("snapshot.rename", 2),
]  # fmt: skip


def _config(tmp_path: Path, guarantee: str = "exactly_once", labels: dict | None = None) -> Config:
    return Config.model_validate({
        "labels": labels or {},
        "model": {"task": "binary", "pipeline": ["tree.HoeffdingTreeClassifier"]},
        "drift": {"policy": "best"},
        "kafka": {"input_topic": "events", "label_topic": "labels", "predictions_topic": "predictions",
                  "dead_letter_topic": "dead", "group_id": "g"},
        "snapshots": {"directory": str(tmp_path / "snapshots")},
        "service": {"guarantee": guarantee, "checkpoint_every_events": 300, "commit_every_seconds": 0.001},
    })  # fmt: skip


def _broker() -> FakeKafka:
    kafka = FakeKafka(batch=60)
    kafka.interleave = 7  # events and labels read in turn, a few of each at a time
    kafka.append("events", [json.dumps(event).encode() for event in EVENTS])
    kafka.append("labels", [json.dumps(label).encode() for label in LABELS])
    return kafka


def _run(kafka: FakeKafka, config: Config) -> Service:
    service = Service(config, kafka.connector(), "test")
    kafka.on_idle = service.request_stop
    service.run()
    return service


def _check_exactly_once(kafka: FakeKafka, config: Config) -> None:
    _check_exactly_once_for(kafka, config, EVENTS)


def _check_exactly_once_for(kafka: FakeKafka, config: Config, events: list[dict], partition: int = 0) -> None:
    """``events``: those of input partition ``partition`` (its examples, its join, its model)."""
    ids = {event["id"] for event in events}
    predictions = [json.loads(value) for value in kafka.values("predictions")]
    predictions = [p for p in predictions if p["id"] in ids]
    assert sorted(p["id"] for p in predictions) == sorted(ids)  # each once
    examples_topic = (config.kafka.examples_topic, partition)
    examples = [decode_example(record.value or b"") for record in kafka.logs[examples_topic]]
    assert [seq for seq, _, _ in examples] == list(range(1, len(examples) + 1))
    assert sorted(event.id for _, event, _ in examples) == sorted(event["id"] for event in events)
    assert kafka.values("dead") == []

    # A fresh model learning the examples in their order: the same model, the same predictions.
    reference = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="reference-")))
    expected: dict[str, bytes] = {}
    for _, event, prediction in examples:
        if prediction is None:
            expected[event.id] = encode_record(reference.process(event))
        else:
            expected[event.id] = encode_record(prediction)
            reference.learn_joined(event, prediction)
    published = {
        p["id"]: value
        for p, value in zip(
            map(json.loads, kafka.values("predictions")), kafka.values("predictions"), strict=True
        )
        if p["id"] in ids
    }
    joined = {event.id for _, event, prediction in examples if prediction is not None}
    for event_id, record in published.items():
        if event_id in joined:
            assert record == expected[event_id]  # the prediction made when the event came
        else:  # learned at once, as the reference learns it
            assert json.loads(record) == json.loads(expected[event_id])
    store = SnapshotStore.from_config(config.snapshots, PartitionId("events", partition).scope)
    manifest, state = restore_point(store, {f"events:{partition}": 10**12, f"labels:{partition}": 10**12})
    assert manifest.reason == "shutdown"
    assert canonical_pickle(state.model) == canonical_pickle(reference.state.model)
    assert state.metrics.values() == reference.state.metrics.values()
    assert canonical_pickle(state.monitor) == canonical_pickle(reference.state.monitor)


def test_delayed_labels_are_learned_once_with_the_prediction_made_at_event_time(tmp_path):
    kafka = _broker()
    config = _config(tmp_path)
    service = _run(kafka, config)
    _check_exactly_once(kafka, config)
    # Each label joined is measured in the label delay histogram the metrics endpoint shows.
    label_delays = service.telemetry.registry.get_sample_value("stream_label_delay_seconds_count")
    assert label_delays == len(LABELS)
    meters = [record.value for record in kafka.records(config.kafka.join_topic) if record.key == b"meter"]
    counts = json.loads(meters[-1])  # the join's counters as last committed
    assert counts["joined"] == len(LABELS) and counts["events_seen"] == len(EVENTS)
    assert counts["duplicates"] == counts["orphans"] == counts["expired"] == 0


@pytest.mark.parametrize(("step", "at"), CRASH_STEPS, ids=[f"{step}-{at}" for step, at in CRASH_STEPS])
def test_a_crash_at_any_step_loses_no_label_and_learns_none_twice(tmp_path, step, at, file_steps):
    kafka = _broker()
    file_steps.append(kafka)  # snapshot writes and renames can be where it dies too
    config = _config(tmp_path)
    kafka.plan.step, kafka.plan.at = step, at
    with pytest.raises(Killed):
        _run(kafka, config)
    kafka.plan.step = ""
    _run(kafka, config)
    _check_exactly_once(kafka, config)


def test_five_crashes_in_one_run_still_give_the_model_of_the_learning_order(tmp_path):
    kafka = _broker()
    config = _config(tmp_path)
    rng = random.Random(3)
    for step in rng.sample(["send", "send", "poll", "transaction.commit", "transaction.committed"], 5):
        kafka.plan.calls.clear()
        kafka.plan.step, kafka.plan.at = step, rng.randint(2, 40)
        try:
            _run(kafka, config)
        except Killed:
            continue
    kafka.plan.step = ""
    _run(kafka, config)
    _check_exactly_once(kafka, config)


def test_a_backlog_of_events_and_labels_is_learned_in_the_order_it_was_produced(tmp_path, monkeypatch):
    """All events read before any label (one topic's run at a time), unless the service orders
    them: then each event is predicted by a model that learned every label produced before it."""
    monkeypatch.setattr("stream.checkpoint.MAX_HELD_IN_ORDER", 50)  # pause a topic 50 records ahead
    events = [{"id": f"e{n}", "x": event["x"]} for n, event in enumerate(drifting_events(400, seed=3))]
    labels = [{"id": f"e{n}", "y": event["y"]} for n, event in enumerate(drifting_events(400, seed=3))]
    kafka = FakeKafka(batch=100)
    kafka.append("events", [json.dumps(e).encode() for e in events], [1_000 * n for n in range(400)])
    kafka.append(
        "labels", [json.dumps(label).encode() for label in labels], [1_000 * n + 5_500 for n in range(400)]
    )
    config = _config(tmp_path)
    _run(kafka, config)
    _check_exactly_once_for(kafka, config, events)
    predictions = [json.loads(value) for value in kafka.values("predictions")]
    # The first six events come before any label; every later one after the label five before it.
    assert [p["id"] for p in predictions if p["y_pred"] is None] == [f"e{n}" for n in range(6)]
    examples = [decode_example(value) for value in kafka.values(config.kafka.examples_topic)]
    assert [event.id for _, event, _ in examples] == [f"e{n}" for n in range(400)]


def test_an_integer_no_float_holds_is_a_dead_letter_and_its_example_is_kept_exactly(tmp_path):
    """orjson reads integers beyond 64 bits as floats, but not one beyond a float's range: that one
    comes as a Python integer, which the examples topic must write (by json) and read back as is."""
    kafka = FakeKafka()
    events = [{"id": "huge", "x": {"f": 10**400}, "y": True}, {"id": "small", "x": {"f": 1.0}, "y": True}]
    kafka.append("events", [json.dumps(e).encode() for e in events])
    kafka.append("labels", [])
    config = _config(tmp_path)
    _run(kafka, config)
    examples = {
        event.id: event
        for _, event, _ in (decode_example(v) for v in kafka.values(config.kafka.examples_topic))
    }
    assert examples["huge"].x == {"f": 10**400} and set(examples) == {"huge", "small"}
    (letter,) = [json.loads(value) for value in kafka.values("dead")]
    assert "the model cannot" in letter["error"]  # refused, so learning it again changes nothing


def _dead_letters(kafka: FakeKafka) -> list[tuple[str, int, str]]:
    letters = [json.loads(value) for value in kafka.values("dead")]
    return [(letter["source"]["topic"], letter["source"]["offset"], letter["error"]) for letter in letters]


def test_the_join_expires_by_stream_time_and_its_orphans_are_dead_letters_with_their_source(tmp_path):
    """Stream time is the latest produce time seen (a record without one counts as produced now),
    not the wall clock; what waited past labels.max_wait_seconds of it expires, between records
    too, and a restart goes on from the join it committed."""
    config = _config(tmp_path, labels={"max_wait_seconds": 10})
    kafka = FakeKafka()

    def append(topic: str, records: list[tuple[bytes | dict, int]]) -> None:
        values = [value if isinstance(value, bytes) else json.dumps(value).encode() for value, _ in records]
        kafka.append(topic, values, [ts for _, ts in records])

    x = {"f": 1.0}
    append("events", [({"id": "a", "x": x}, 0), ({"id": "b", "x": x}, 5_000),
                      ({"id": "c", "x": x, "y": True}, 10_000), ({"id": "ghost", "x": x}, 11_005),
                      (b"not json", 16_000)])  # fmt: skip
    append("labels", [({"id": "ghost", "y": True}, 1_000), ({"id": "lost", "y": True}, 5_500)])
    _run(kafka, config)
    # At 11.005 s "a" (0 s) expires and the label for "ghost" (1 s) is let go; at 16 s, after the
    # last record, "b" (5 s) expires and the label for "lost" (5.5 s) is let go.
    assert _dead_letters(kafka) == [
        ("labels", 0, "no event with id 'ghost' came within labels.max_wait_seconds=10"),
        ("events", 4, _dead_letters(kafka)[1][2]),
        ("labels", 1, "no event with id 'lost' came within labels.max_wait_seconds=10"),
    ]
    # After the restart: the label of "a", expired before; "d" waits, then a record without a
    # produce time moves stream time to now, and "d" expires before its label comes.
    append("events", [({"id": "d", "x": x}, 21_000), ({"id": "now", "x": x, "y": True}, -1)])
    append("labels", [({"id": "a", "y": True}, 20_000), ({"id": "d", "y": True}, 22_000)])
    _run(kafka, config)
    assert _dead_letters(kafka)[3:] == [
        ("labels", 2, "the event 'a' expired unlearned before its label came"),
        ("labels", 3, "the event 'd' expired unlearned before its label came"),
    ]
    counts = json.loads([r.value for r in kafka.records(config.kafka.join_topic) if r.key == b"meter"][-1])
    assert (counts["expired"], counts["orphans"], counts["joined"]) == (4, 4, 0)


def test_a_restore_reads_the_examples_after_its_snapshot_and_says_what_retention_took(
    tmp_path, caplog, monkeypatch
):
    # Six examples: five learned at once, then "j", learned with the prediction made when it came
    # (its label was produced after every event); "w" waits, and the label for "ghost" is held.
    events = [
        {"id": "j", "x": {"f": 0.0}},
        *({"id": f"e{n}", "x": {"f": float(n)}, "y": n > 2} for n in range(5)),
        {"id": "w", "x": {"f": 1.0}},
    ]
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(event).encode() for event in events], [1_000 * n for n in range(7)])
    labels = [{"id": "j", "y": True}, {"id": "ghost", "y": True}]
    kafka.append("labels", [json.dumps(label).encode() for label in labels], [10_000, 11_000])
    config = _config(tmp_path)
    examples = (config.kafka.examples_topic, 0)
    reads: list[tuple[int, int]] = []
    read_range = FakeSource.read_range

    def reading(self, partition, start, end, *args):
        if partition == examples:
            reads.append((start, end))
        return read_range(self, partition, start, end, *args)

    monkeypatch.setattr(FakeSource, "read_range", reading)
    _run(kafka, config)
    (shutdown,) = SnapshotStore.from_config(config.snapshots, "events-0").list(reason="shutdown")
    caplog.set_level("INFO", logger="stream.checkpoint")
    reads.clear()
    _run(kafka, config)  # restored from its snapshot: nothing to learn again, the join as committed
    assert reads == [(6, 6)]
    committed = "committed offsets {'events:0': 7, 'labels:0': 2}"
    assert (
        f"restored events:0 from snapshot {shutdown.id}; re-learned 0 examples; {committed}"
        in caplog.messages
    )
    assert "events:0: the join holds 1 waiting events and 1 held labels" in caplog.messages

    # The snapshots lost, and the first two examples to the topic's retention: a new model learns
    # the other four, and the log says which it misses.
    shutil.rmtree(tmp_path / "snapshots")
    kafka.log_start[examples] = 2
    caplog.clear()
    _run(kafka, config)
    assert [record.getMessage() for record in caplog.records if record.levelname == "ERROR"] == [
        f"{config.kafka.examples_topic}:0: examples 1..2 are gone (topic retention); the model misses them"
    ]
    assert f"restored events:0 from a new model; re-learned 4 examples; {committed}" in caplog.messages
    # The four as a fresh model learns them from the topic: a joined one with its kept prediction.
    reference = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="reference-")))
    relearned = [decode_example(record.value or b"") for record in kafka.logs[examples][2:]]
    assert [(event.id, prediction is None) for _, event, prediction in relearned] == [
        ("e2", True),
        ("e3", True),
        ("e4", True),
        ("j", False),
    ]
    for _, event, prediction in relearned:
        reference.process(event) if prediction is None else reference.learn_joined(event, prediction)
    state = _final_state(config)
    assert state.labelled == 4 and state.metrics.values() == reference.state.metrics.values()


def _final_state(config: Config, partition: int = 0):
    store = SnapshotStore.from_config(config.snapshots, PartitionId("events", partition).scope)
    manifest, state = restore_point(store, {f"events:{partition}": 10**12, f"labels:{partition}": 10**12})
    assert manifest.reason == "shutdown"
    return state


def test_each_partition_keeps_its_own_examples_join_and_model_through_a_crash(tmp_path, file_steps):
    events, labels = delayed_stream(400, seed=9)
    kafka = FakeKafka(partitions=2, batch=60)
    file_steps.append(kafka)
    kafka.interleave = 7
    kafka.append("events", [json.dumps(event).encode() for event in events])  # event n on partition n % 2
    kafka.create("labels")
    partition_of = {event["id"]: n % 2 for n, event in enumerate(events)}
    for label in labels:  # co-partitioned: each label on its event's partition
        kafka.logs[("labels", partition_of[label["id"]])].append(Record(None, json.dumps(label).encode()))
    config = _config(tmp_path)
    kafka.plan.step, kafka.plan.at = "snapshot.write", 3  # after the first checkpoint of partition 0
    with pytest.raises(Killed):
        _run(kafka, config)
    kafka.plan.step = ""
    _run(kafka, config)
    assert len(kafka.values("predictions")) == len(events)
    for partition in (0, 1):
        _check_exactly_once_for(kafka, config, events[partition::2], partition)
        ids = {event["id"] for event in events[partition::2]}
        changes = [
            record for record in kafka.logs[(config.kafka.join_topic, partition)] if record.key != b"meter"
        ]
        assert changes and {(record.key or b"").decode()[2:] for record in changes} <= ids
        meters = [
            record.value
            for record in kafka.logs[(config.kafka.join_topic, partition)]
            if record.key == b"meter"
        ]
        assert json.loads(meters[-1])["joined"] == sum(1 for label in labels if label["id"] in ids)


def test_a_topic_far_ahead_of_the_other_is_paused_at_max_held_and_resumed_below_half(tmp_path, monkeypatch):
    monkeypatch.setattr("stream.checkpoint.MAX_HELD_IN_ORDER", 5)
    config = _config(tmp_path)
    connector = FakeKafka().connector()
    source = connector.source(["events", "labels"], "g", "test")
    checkpointer = Checkpointer(config, source, connector.sink(None), Counters(), lambda *letter: None)
    events, labels = PartitionId("events", 0), PartitionId("labels", 0)
    store = SnapshotStore.from_config(config.snapshots, events.scope)
    checkpointer.partitions[events] = OwnedPartition(
        events, Engine(config, store), labels=labels, order=TimeOrder(config.labels.order_wait_seconds, 0.0)
    )
    offsets = {events: 0, labels: 0}

    def take(partition: PartitionId, *seconds: float) -> list[tuple[str, float]]:
        """Records of ``partition`` produced at ``seconds`` come: what goes, in order."""
        messages = []
        for second in seconds:
            messages.append(Message(*partition, offsets[partition], None, b"{}", int(second * 1000)))
            offsets[partition] += 1
        ready = checkpointer.in_time_order(messages, now=0.0)
        return [(message.topic, message.timestamp_ms / 1000) for message in ready]

    for round_ in range(2):  # and again once resumed
        start = offsets[events]
        # No label to compare them with yet (the one held from the round before goes first).
        previous = [("labels", start - 0.5)] if round_ else []
        assert take(events, *range(start, start + 4)) == previous and source.paused == set()
        assert take(events, start + 4) == [] and source.paused == {events}  # five held: paused
        first = [("events", start), ("events", start + 1), ("labels", start + 1.5)]
        assert take(labels, start + 1.5) == first
        assert take(labels, start + 2.5) == [("events", start + 2), ("labels", start + 2.5)]
        assert source.paused == {events}  # two held: not below half of five yet
        assert take(labels, start + 3.5) == [("events", start + 3), ("labels", start + 3.5)]
        assert source.paused == set()  # one held
        assert take(labels, start + 4.5) == [("events", start + 4)]  # the label waits for an event


def test_a_rebalance_resumes_what_was_paused_and_pausing_goes_on_after_it(tmp_path, monkeypatch):
    monkeypatch.setattr("stream.checkpoint.MAX_HELD_IN_ORDER", 5)
    config = _config(tmp_path)
    kafka = FakeKafka()
    kafka.append("events", [b"{}"] * 5)
    kafka.append("labels", [b"{}"])  # not read yet: the events wait for it, to compare with
    connector = kafka.connector()
    source = connector.source(["events", "labels"], "g", "test")
    events, labels = PartitionId("events", 0), PartitionId("labels", 0)
    source.rebalance([events, labels])
    checkpointer = Checkpointer(config, source, connector.sink(None), Counters(), lambda *letter: None)
    engine = Engine(config, SnapshotStore.from_config(config.snapshots, events.scope))
    engine.state.offsets.update({events.key: 0, labels.key: 0})
    checkpointer.partitions[events] = OwnedPartition(
        events, engine, labels=labels, order=TimeOrder(config.labels.order_wait_seconds, 0.0)
    )

    def read_the_events() -> list[Message]:
        messages = [Message(*events, offset, None, b"{}", 1_000 * offset) for offset in range(5)]
        return checkpointer.in_time_order(messages, now=0.0)

    assert read_the_events() == [] and source.paused == {events}  # five held: paused
    checkpointer.rebalance(revoked=False)  # the group changed; this member kept its partition
    assert source.paused == set()
    # Sought back to their next offset, the events held are read again: held as many, paused again.
    assert read_the_events() == [] and source.paused == {events}
