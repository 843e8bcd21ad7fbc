from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from stream.errors import InvalidEvent
from stream.events import EventModel, PredictionRecord, decode_event

VALID = [
    b'{"id": "e-1", "x": {"f1": 0.3, "color": "red", "flag": true}, "y": true, "key": "k", "ts": "2026"}',
    b'{"x": {"f1": 1}}',
    b'{"x": {}, "y": 0}',
    b'{"id": 7, "x": {"a": -2.5e10}, "ts": 1700000000.5}',
]
INVALID = [
    (b"garbage \xff\xfe", "not UTF-8|malformed JSON"),
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"y": true}', "missing required field 'x'"),
    (b'{"x": [1, 2]}', "'x' must be an object"),
    (b'{"x": {"a": null}}', "feature 'a' must be a number, string or boolean"),
    (b'{"x": {"a": {"nested": 1}}}', "feature 'a' must be"),
    (b'{"x": {"a": NaN}}', "not a finite number"),
    (b'{"x": {"a": Infinity}}', "not a finite number"),
    (b'{"x": {"a": 1}, "y": [1]}', "label for a binary task"),
    (b'{"x": {"a": 1}, "y": "maybe"}', "label for a binary task"),
    (b'{"x": {"a": 1}, "id": {"a": 1}}', "'id' must be"),
    (b'{"x": {"a": 1}, "surprise": 1}', "unknown field"),
    (b"[" * 100_000, "malformed JSON"),
]


@pytest.mark.parametrize("raw", VALID)
def test_valid_events_decode(raw):
    event = decode_event(raw, "binary")
    assert event.x == json.loads(raw)["x"]


@pytest.mark.parametrize(("raw", "reason"), INVALID)
def test_invalid_events_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(InvalidEvent, match=reason):
        decode_event(raw, "binary")


@pytest.mark.parametrize("raw", VALID + [raw for raw, _ in INVALID[2:13]])
def test_fast_decoder_and_pydantic_contract_agree(raw):
    """The hot-loop decoder accepts exactly what the public pydantic contract accepts."""
    try:
        fast = decode_event(raw, "binary")
    except InvalidEvent:
        fast = None
    try:
        slow = EventModel.model_validate_json(raw).to_event("binary")
    except (ValidationError, InvalidEvent, ValueError):
        slow = None
    assert fast == slow


def test_labels_are_checked_against_the_task():
    assert decode_event(b'{"x": {}, "y": 1}', "binary").y is True
    assert decode_event(b'{"x": {}, "y": "cat"}', "multiclass").y == "cat"
    assert decode_event(b'{"x": {}, "y": 2.5}', "regression").y == 2.5
    with pytest.raises(InvalidEvent, match="regression task must be a number"):
        decode_event(b'{"x": {}, "y": true}', "regression")
    with pytest.raises(InvalidEvent, match="multiclass"):
        decode_event(b'{"x": {}, "y": 1.5}', "multiclass")


def test_prediction_record_documents_the_output():
    record = PredictionRecord.model_validate(
        {"id": "e-1", "y_pred": True, "y_proba": {"true": 0.7, "false": 0.3}, "y": True, "model_version": 1}
    )
    assert record.y_proba == {"true": 0.7, "false": 0.3}


def test_numbers_python_cannot_hold_are_rejected_not_raised():
    with pytest.raises(InvalidEvent, match="malformed JSON"):
        decode_event(b'{"x": {"a": ' + b"9" * 5000 + b"}}", "binary")
    with pytest.raises(InvalidEvent, match="not a finite number"):
        decode_event(b'{"x": {"a": 1}, "y": ' + b"9" * 400 + b"}", "regression")
