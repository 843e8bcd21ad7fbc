"""The per-record step (stream/step.py): what is refused, how events are named, what is counted."""

from __future__ import annotations

import json

import pytest

from stream.config import Config
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
