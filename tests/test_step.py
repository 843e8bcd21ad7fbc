"""The per-record step (stream/step.py): what is refused, how events are named, what is counted."""

from __future__ import annotations

import json
import math

import pytest
from river import base

from stream import pickling
from stream.config import Config
from stream.join import Join
from stream.prequential import Engine
from stream.snapshots import SnapshotStore
from stream.step import RecordStep

EVENT = json.dumps({"x": {"a": 1.0}, "y": True}).encode()


@pytest.fixture
def step_and_engine(tmp_path):
    config = Config.model_validate({"service": {"max_event_bytes": len(EVENT)}})
    return RecordStep(config), Engine(config, SnapshotStore(tmp_path))


def test_an_event_of_exactly_the_size_limit_is_used_and_one_byte_more_is_refused(step_and_engine):
    step, engine = step_and_engine
    assert step(engine, EVENT, "events-0-", 1) is None
    assert step(engine, EVENT + b" ", "events-0-", 2) == (
        f"event of {len(EVENT) + 1} bytes exceeds service.max_event_bytes={len(EVENT)}"
    )
    assert (engine.state.events, engine.state.errors) == (1, 1)


def test_an_event_at_the_feature_and_label_limits_is_used_and_one_past_them_is_refused(tmp_path):
    config = Config.model_validate({
        "model": {"task": "multiclass", "pipeline": ["tree.HoeffdingTreeClassifier"]},
        "limits": {"max_features": 3, "max_label_chars": 5},
    })  # fmt: skip
    step, engine = RecordStep(config), Engine(config, SnapshotStore(tmp_path))
    at_the_limits = {"x": {"a": 1.0, "b": 2.0, "c": 3.0}, "y": "tiger"}
    assert step(engine, _json(at_the_limits), "p-", 0) is None
    assert step(engine, _json({**at_the_limits, "x": {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}}), "p-", 1) == (
        "event has 4 features; limits.max_features=3"
    )
    assert step(engine, _json({**at_the_limits, "y": "tigers"}), "p-", 2) == (
        "label of 6 characters; limits.max_label_chars=5"
    )
    assert (engine.state.labelled, engine.state.errors) == (1, 2)


def test_an_empty_message_is_refused_with_its_reason(step_and_engine):
    step, engine = step_and_engine
    assert step(engine, None, "events-0-", 3) == "empty message (no value)"
    assert engine.state.errors == 1


def test_an_event_without_an_id_is_named_after_where_it_came_from(step_and_engine):
    step, engine = step_and_engine
    emitted: list[dict] = []
    step(engine, EVENT, "events-0-", 7, emitted.append)
    step(engine, b'{"id":"m","x":{"a":2}}', "events-0-", 8, emitted.append)
    step(engine, {"x": {"a": 3.0}, "y": False}, "row-", 9, emitted.append)  # a CSV row: a mapping
    assert [record["id"] for record in emitted] == ["events-0-7", "m", "row-9"]
    assert engine.state.labelled == 2


def _delayed(tmp_path, task: str = "binary", **labels):
    """A step with a join (labels wait at most 100 s by the step's clock), its engine, and what
    it published and was told to learn."""
    config = Config.model_validate(
        {
            "model": {"task": task, "pipeline": ["tree.HoeffdingTreeClassifier"]},
            "labels": {"max_wait_seconds": 100, **labels},
            "limits": {"max_label_chars": 5},
            "service": {"max_event_bytes": 120},
        }
    )
    learning: list[tuple] = []
    join = Join(config.labels)
    step = RecordStep(config, join, lambda event, prediction: learning.append((event, prediction)))
    return step, Engine(config, SnapshotStore(tmp_path)), join, learning


def _json(record: dict) -> bytes:
    return json.dumps(record).encode()


def test_a_joined_label_is_learned_with_its_events_features_and_prediction_and_its_delay_measured(tmp_path):
    step, engine, join, learning = _delayed(tmp_path)
    emitted: list[dict] = []
    # "a" and its label carry their produce times; "b" and its label do not: the step's clock counts.
    assert (
        step(engine, _json({"id": "a", "x": {"f": 1.0}, "ts": 1_000}), "p-", 0, emitted.append, now=5.0)
        is None
    )
    assert step(engine, _json({"id": "b", "x": {"f": 2.0}}), "p-", 1, emitted.append, now=30.0) is None
    assert [p["id"] for p in emitted] == ["a", "b"] and join.waiting == 2
    assert engine.state.labelled == 0 and learning == []  # predicted and published, not learned
    assert step.label(engine, _json({"id": "a", "y": True, "ts": 1_045}), "label a", now=40.0) is None
    assert step.label(engine, _json({"id": "b", "y": False}), "label b", now=42.0) is None
    assert [(event.id, event.x, event.y) for event, _ in learning] == [
        ("a", {"f": 1.0}, True),
        ("b", {"f": 2.0}, False),
    ]
    assert [prediction for _, prediction in learning] == emitted  # the predictions made when the events came
    assert engine.state.labelled == 2 and join.waiting == 0
    summary = join.summary()
    assert (summary.joined, summary.duplicates, summary.orphans) == (2, 0, 0)
    assert (summary.max_label_delay_seconds, summary.mean_label_delay_seconds) == (45.0, (45.0 + 12.0) / 2)
    # Remembered as learned from when they were joined: a second label within the wait is a duplicate.
    assert step.label(engine, _json({"id": "b", "y": True}), "again", now=141.0) is None
    assert join.summary().duplicates == 1 and join.take_orphans() == []


def test_a_label_held_for_its_event_is_learned_with_it_at_once_and_its_delay_measured(tmp_path):
    step, engine, join, learning = _delayed(tmp_path)
    emitted: list[dict] = []
    # Produced after its event (ts), but came first; and one with no produce times at all.
    assert step.label(engine, _json({"id": "c", "y": True, "ts": 2_030}), "label c", now=10.0) is None
    assert step.label(engine, _json({"id": "d", "y": False}), "label d", now=11.0) is None
    assert join.held == 2 and engine.state.labelled == 0
    assert (
        step(engine, _json({"id": "c", "x": {"f": 1.0}, "ts": 2_000}), "p-", 0, emitted.append, now=50.0)
        is None
    )
    assert step(engine, _json({"id": "d", "x": {"f": 2.0}}), "p-", 1, emitted.append, now=60.0) is None
    assert [(event.id, event.y, prediction) for event, prediction in learning] == [
        ("c", True, None),
        ("d", False, None),
    ]
    assert [(p["id"], p["y"]) for p in emitted] == [("c", True), ("d", False)]
    assert engine.state.labelled == 2 and join.held == join.waiting == 0
    summary = join.summary()
    assert summary.joined == 2 and (summary.max_label_delay_seconds, summary.mean_label_delay_seconds) == (
        30.0,
        15.0,
    )
    # Learned when they came: a label for either within the wait is a duplicate, not held again.
    assert step.label(engine, _json({"id": "d", "y": True}), "again", now=159.0) is None
    assert join.held == 0 and join.summary().duplicates == 1


def test_an_event_that_brings_its_own_label_wins_over_the_held_one_which_is_a_duplicate(tmp_path):
    step, engine, join, learning = _delayed(tmp_path)
    for n in range(2):
        step.label(engine, _json({"id": f"e{n}", "y": True}), f"label {n}", now=1.0)
        assert step(engine, _json({"id": f"e{n}", "x": {"f": 1.0}, "y": False}), "p-", n, now=2.0) is None
    assert [(event.id, event.y, prediction) for event, prediction in learning] == [
        ("e0", False, None),
        ("e1", False, None),
    ]
    summary = join.summary()
    assert (summary.duplicates, summary.joined, summary.held) == (2, 0, 0) and engine.state.labelled == 2
    # Learned at once: a later label is a duplicate too.
    assert step.label(engine, _json({"id": "e1", "y": True}), "late", now=90.0) is None
    assert join.summary().duplicates == 3


def test_an_event_already_waiting_under_its_id_is_refused_and_the_first_keeps_waiting(tmp_path):
    step, engine, join, _ = _delayed(tmp_path)
    emitted: list[dict] = []
    assert step(engine, _json({"id": "a", "x": {"f": 1.0}}), "p-", 0, emitted.append, now=1.0) is None
    assert step(engine, _json({"id": "a", "x": {"f": 9.0}}), "p-", 1, emitted.append, now=2.0) == (
        "an event with id 'a' is already waiting for its label"
    )
    assert len(emitted) == 1 and engine.state.errors == 1 and join.waiting == 1
    step.label(engine, _json({"id": "a", "y": True}), "label a", now=3.0)
    assert engine.state.labelled == 1


def test_an_event_waits_by_the_steps_clock_and_expires_unlearned_after_max_wait_seconds(tmp_path):
    step, engine, join, learning = _delayed(tmp_path)
    step(engine, _json({"id": "slow", "x": {"f": 1.0}}), "p-", 0, now=1_000.0)
    step(engine, _json({"id": "other", "x": {"f": 1.0}, "y": True}), "p-", 1, now=1_100.0)  # just within
    assert join.waiting == 1
    assert step.label(engine, _json({"id": "slow", "y": True}), "label slow", now=1_101.0) is None
    assert join.summary().expired == 1 and [event.id for event, _ in learning] == ["other"]
    assert join.take_orphans() == [("label slow", "the event 'slow' expired unlearned before its label came")]


def test_a_held_label_whose_event_is_refused_is_an_orphan_naming_the_event_and_the_reason(tmp_path):
    step, engine, join, _ = _delayed(tmp_path, "multiclass")
    step(engine, _json({"id": "a", "x": {"f": 1.0}, "y": "cat"}), "p-", 0, now=1.0)
    step.label(engine, _json({"id": "b", "y": 7}), "label b", now=2.0)  # not a str, as "cat" is
    reason = step(engine, _json({"id": "b", "x": {"f": 2.0}}), "p-", 1, now=3.0)
    assert "this model's labels are of type str" in reason and engine.state.errors == 1
    assert join.take_orphans() == [("label b", f"its event 'b' was refused: {reason}")]


def test_a_label_the_model_cannot_learn_is_refused_with_the_models_reason_and_a_later_one_is_an_orphan(
    tmp_path,
):
    step, engine, join, _ = _delayed(tmp_path, "multiclass")
    step(engine, _json({"id": "a", "x": {"f": 1.0}, "y": "cat"}), "p-", 0, now=1.0)
    step(engine, _json({"id": "b", "x": {"f": 2.0}}), "p-", 1, now=2.0)
    reason = step.label(engine, _json({"id": "b", "y": 7}), "label b", now=3.0)
    assert reason.startswith("the model cannot learn event 'b' with this label: ")
    assert "this model's labels are of type str" in reason
    assert join.summary().refused == 1 and engine.state.labelled == 1
    assert step.label(engine, _json({"id": "b", "y": "dog"}), "label b again", now=4.0) is None
    assert join.take_orphans() == [
        ("label b again", "the model refused to learn the event 'b' with its label")
    ]
    # Remembered as refused for labels.max_wait_seconds from the refusal, then forgotten.
    assert step.label(engine, _json({"id": "b", "y": "dog"}), "label b at last", now=104.0) is None
    assert join.held == 1 and join.take_orphans() == []


def test_a_label_that_breaks_the_contract_or_the_limits_is_refused_with_the_reason_and_counted(tmp_path):
    step, engine, join, _ = _delayed(tmp_path, "multiclass")
    step(engine, _json({"id": "a", "x": {"f": 1.0}}), "p-", 0, now=1.0)
    oversized = _json({"id": "a", "y": "c" * 200})
    assert step.label(engine, oversized, now=2.0) == (
        f"label of {len(oversized)} bytes exceeds service.max_event_bytes=120"
    )
    assert step.label(engine, _json({"id": "a", "y": "cheetah"}), now=2.0) == (
        "label of 7 characters; limits.max_label_chars=5"
    )
    assert step.label(engine, None, now=2.0) == "empty message (no value)"
    assert (
        step.label(engine, {"id": "a", "y": "cheetah"}, now=2.0)
        == "label of 7 characters; limits.max_label_chars=5"
    )
    assert "id" in step.label(engine, _json({"y": "cat"}), now=2.0)
    assert join.summary().invalid_labels == 5 and join.waiting == 1 and engine.state.labelled == 0
    assert step.label(engine, {"id": "a", "y": "cat"}, now=3.0) is None  # a mapping, as a CSV row is
    assert engine.state.labelled == 1


class Breakable(base.Classifier):
    """Learning an event with a feature ``breaks`` leaves it unable to answer (non-finite
    probabilities); else it predicts the share of ``True`` labels learned."""

    def __init__(self) -> None:
        self.seen, self.trues, self.broken = 0, 0, False

    def learn_one(self, x: dict, y: bool) -> None:
        self.broken |= "breaks" in x
        self.seen, self.trues = self.seen + 1, self.trues + (y is True)

    def predict_proba_one(self, x: dict) -> dict[bool, float]:
        p_true = math.nan if self.broken else (self.trues + 1) / (self.seen + 2)
        return {False: 1 - p_true, True: p_true}


def breakable() -> Breakable:
    return Breakable()


def test_an_example_learned_through_the_join_that_breaks_the_model_is_unlearned_with_the_origin_it_came_with(
    tmp_path,
):
    config = Config.model_validate(
        {"model": {"task": "binary", "factory": "tests.test_step:breakable"}, "drift": {"policy": "none"}}
    )

    def unlearned(label_first: bool) -> list:
        """Two good events, one whose learning breaks the model (its label comes after it, or
        before), then one more."""
        join = Join(config.labels)
        step, engine = RecordStep(config, join), Engine(config, SnapshotStore(tmp_path / str(label_first)))
        for n in range(2):
            step(engine, _json({"x": {"a": 1.0}, "y": True}), "p-", n, origin=f"event {n}", now=1.0)
        if label_first:
            step.label(engine, _json({"id": "j", "y": True}), "label j", now=2.0)
        step(engine, _json({"id": "j", "x": {"b": 1.0, "breaks": 1.0}}), "p-", 2, origin="event j", now=3.0)
        if not label_first:
            step.label(engine, _json({"id": "j", "y": True}), "label j", now=4.0)
        step(engine, _json({"x": {"a": 1.0}, "y": True}), "p-", 3, origin="event 3", now=5.0)
        return [origin for origin, _ in engine.take_unlearned()]

    assert unlearned(label_first=False) == ["label j"]  # learned when its label came
    assert unlearned(label_first=True) == ["event j"]  # learned at once, when the event came


@pytest.mark.parametrize("with_join", [False, True])
def test_an_event_learned_at_once_counts_its_bytes_against_the_journals_budget(
    tmp_path, monkeypatch, with_join
):
    """Healing keeps a good state and the events learned since, up to a memory budget; past it,
    the next event starts a new good state (one pickle). With or without a join."""
    pickled = []
    real = pickling.dumps
    monkeypatch.setattr(pickling, "dumps", lambda state: pickled.append(1) or real(state))
    step, engine, _, _ = _delayed(tmp_path)
    if not with_join:
        step = RecordStep(engine.config)
    event = _json({"id": "a", "x": {"f": 1.0}, "y": True})
    engine._journal.budget_bytes = len(event)
    step(engine, event, "p-", 0, now=1.0)
    assert pickled == []  # a fresh model is its own good state
    step(engine, _json({"id": "b", "x": {"f": 2.0}, "y": True}), "p-", 1, now=2.0)
    assert pickled == [1]  # the first event's bytes filled the budget


def test_a_csv_row_came_as_no_bytes_and_counts_nothing_against_the_journals_budget(tmp_path, monkeypatch):
    pickled = []
    real = pickling.dumps
    monkeypatch.setattr(pickling, "dumps", lambda state: pickled.append(1) or real(state))
    step, engine = RecordStep(Config()), Engine(Config(), SnapshotStore(tmp_path))
    engine._journal.budget_bytes = 1
    for n in range(3):
        assert step(engine, {"x": {"f": float(n)}, "y": n == 1}, "row-", n) is None
    assert pickled == [] and engine.state.labelled == 3
