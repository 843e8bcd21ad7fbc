"""The label contract (stream/labels.py): the fast decoder agrees with the pydantic model."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from stream.errors import InvalidEvent
from stream.labels import LabelMessage, LabelModel, decode_label, epoch_seconds
from tests.test_events import integers, json_values, labels, scalars

label_records = st.fixed_dictionaries(
    {"id": st.one_of(st.text(max_size=6), integers, json_values), "y": labels},
    optional={"ts": st.one_of(st.text(max_size=6), st.floats(), integers, json_values)},
)


def _decoded_both_ways(raw: bytes, task: str) -> tuple[LabelMessage | None, LabelMessage | None]:
    try:
        fast = decode_label(raw, task)
    except InvalidEvent as error:
        assert str(error), "a refusal always gives its reason"
        fast = None
    try:
        slow = LabelModel.model_validate_json(raw).to_label(task)
    except (ValidationError, InvalidEvent):
        slow = None
    return fast, slow


@settings(deadline=None)
@example(payload={"id": "a", "y": True, "ts": float("nan")}, task="binary")
@example(payload={"id": True, "y": True}, task="binary")
@example(payload={"id": "a", "y": None}, task="multiclass")
@given(
    payload=st.one_of(
        label_records,
        label_records,
        st.builds(
            lambda label, extra: {**extra, **label},
            label_records,
            st.dictionaries(st.text(max_size=3), scalars),
        ),
        json_values,
    ),
    task=st.sampled_from(["binary", "multiclass", "regression"]),
)
def test_fast_label_decoder_agrees_with_the_pydantic_contract_on_any_json(payload, task):
    raw = json.dumps(payload).encode()
    fast, slow = _decoded_both_ways(raw, task)
    assert repr(fast) == repr(slow)  # repr, not ==: True == 1 == 1.0, but the types must agree too


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"y": true}', "a label needs an 'id': the id of its event"),
        (b'{"id": "a"}', "a label needs a 'y'"),
        (b'{"id": "a", "y": 2}', "label for a binary task must be true/false or 0/1, got 2"),
        (b'{"id": "a", "y": true, "x": {}}', "unknown field(s) in a label: 'x'"),
        (b"[1]", "a label must be a JSON object, got list"),
        (b'{"id": "a", "y": true, "ts": true}', "'ts' must be a string or a finite number"),
    ],
)
def test_a_bad_label_is_refused_with_the_reason(raw, reason):
    with pytest.raises(InvalidEvent) as refused:
        decode_label(raw, "binary")
    assert str(refused.value) == reason


def test_label_times_are_read_as_seconds_since_the_epoch():
    assert epoch_seconds("2026-12-01T10:00:05+01:00") == epoch_seconds("2026-12-01T09:00:05Z")
    assert epoch_seconds(12) == 12.0 and epoch_seconds("yesterday") is None
