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
import tempfile
from pathlib import Path

import pytest

from stream.changelog import decode_example
from stream.checkpoint import PartitionId, restore_point
from stream.config import Config
from stream.events import encode_record
from stream.prequential import Engine
from stream.service import Service
from stream.snapshots import SnapshotStore
from tests.fake_connector import FakeKafka, Killed
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


def _config(tmp_path: Path, guarantee: str = "exactly_once") -> Config:
    return Config.model_validate({
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


def _check_exactly_once_for(kafka: FakeKafka, config: Config, events: list[dict]) -> None:
    predictions = [json.loads(value) for value in kafka.values("predictions")]
    assert sorted(p["id"] for p in predictions) == sorted(event["id"] for event in events)  # each once
    examples = [decode_example(value) for value in kafka.values(config.kafka.examples_topic)]
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
    published = dict(zip([p["id"] for p in predictions], kafka.values("predictions"), strict=True))
    joined = {event.id for _, event, prediction in examples if prediction is not None}
    for event_id, record in published.items():
        if event_id in joined:
            assert record == expected[event_id]  # the prediction made when the event came
        else:  # learned at once, as the reference learns it
            assert json.loads(record) == json.loads(expected[event_id])
    store = SnapshotStore.from_config(config.snapshots, PartitionId("events", 0).scope)
    manifest, state = restore_point(store, {"events:0": 10**12, "labels:0": 10**12})
    assert manifest.reason == "shutdown"
    assert canonical_pickle(state.model) == canonical_pickle(reference.state.model)
    assert state.metrics.values() == reference.state.metrics.values()
    assert canonical_pickle(state.monitor) == canonical_pickle(reference.state.monitor)


def test_delayed_labels_are_learned_once_with_the_prediction_made_at_event_time(tmp_path):
    kafka = _broker()
    config = _config(tmp_path)
    _run(kafka, config)
    _check_exactly_once(kafka, config)
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
