from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from stream.config import Config
from stream.errors import InvalidEvent
from stream.events import Event, EventModel, PredictionRecord, decode_event, encode_record, validate_event
from stream.prequential import Engine
from stream.snapshots import SnapshotStore

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


@pytest.mark.parametrize(
    ("raw", "task", "event"),
    [
        (VALID[0], "binary",
         Event(x={"f1": 0.3, "color": "red", "flag": True}, y=True, id="e-1", key="k", ts="2026")),
        (VALID[3], "binary", Event(x={"a": -2.5e10}, id="7", ts=1700000000.5)),  # an integer id as text
        (b'{"x": {}, "y": 0, "ts": 12}', "anomaly", Event(x={}, y=False, ts=12)),
        (b'{"x": {}, "y": 1}', "binary", Event(x={}, y=True)),
        (b'{"x": {}, "y": 3}', "multiclass", Event(x={}, y=3)),
        (b'{"x": {}, "y": false}', "multiclass", Event(x={}, y=False)),
        (b'{"x": {}, "y": -4}', "regression", Event(x={}, y=-4)),
        (b'{"x": {}, "y": null, "id": null, "key": null, "ts": null}', "regression", Event(x={})),
    ],
)  # fmt: skip
def test_a_valid_event_decodes_to_its_fields(raw, task, event):
    assert repr(decode_event(raw, task)) == repr(event)  # repr: True == 1, but the types must agree


@pytest.mark.parametrize(
    ("raw", "task", "reason"),
    [
        (b"[1, 2]", "binary", "an event must be a JSON object, got list"),
        (b'{"x": null}', "binary", "missing required field 'x'"),
        (b'{"x": "a"}', "binary", "'x' must be an object of features, got str"),
        (b'{"x": {"a": 1, "b": 1e999}}', "binary", "feature 'b' is not a finite number"),
        (b'{"x": {"a": null}}', "binary", "feature 'a' must be a number, string or boolean, got NoneType"),
        (b'{"x": {}, "b": 1, "a": 2}', "binary", "unknown field(s): 'a', 'b'"),
        (b'{"x": {}, "id": true}', "binary", "'id' must be a string or an integer"),
        (b'{"x": {}, "id": 1.5}', "binary", "'id' must be a string or an integer"),
        (b'{"x": {}, "key": 1}', "binary", "'key' must be a string"),
        (b'{"x": {}, "ts": false}', "binary", "'ts' must be a string or a finite number"),
        (b'{"x": {}, "ts": [1]}', "binary", "'ts' must be a string or a finite number"),
        (b'{"x": {}, "ts": -Infinity}', "binary", "'ts' must be a string or a finite number"),
        (b'{"x": {}, "y": 2}', "binary", "label for a binary task must be true/false or 0/1, got 2"),
        (b'{"x": {}, "y": "1"}', "anomaly", "label for a anomaly task must be true/false or 0/1, got '1'"),
        (b'{"x": {}, "y": 1.0}', "binary", "label for a binary task must be true/false or 0/1, got 1.0"),
        (b'{"x": {}, "y": 1.5}', "multiclass",
         "label for a multiclass task must be a string, integer or boolean, got 1.5"),
        (b'{"x": {}, "y": "2"}', "regression", "label for a regression task must be a number, got '2'"),
        (b'{"x": {}, "y": false}', "regression", "label for a regression task must be a number, got False"),
        (b'{"x": {}, "y": NaN}', "regression", "label is not a finite number"),
        (b'{"x": {}, "y": 1' + b"0" * 400 + b"}", "regression", "label is not a finite number"),
        (b'{"x": {"a": 1}', "binary", "malformed JSON: Expecting ',' delimiter: line 1 column 15 (char 14)"),
    ],
)  # fmt: skip
def test_every_refusal_says_exactly_why(raw, task, reason):
    with pytest.raises(InvalidEvent) as refused:
        decode_event(raw, task)
    assert str(refused.value) == reason


@pytest.mark.parametrize(("raw", "reason"), INVALID)
def test_invalid_events_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(InvalidEvent, match=reason):
        decode_event(raw, "binary")


@pytest.mark.parametrize("raw", VALID + [raw for raw, _ in INVALID[2:13]])
def test_fast_decoder_and_pydantic_contract_agree(raw):
    """The hot-loop decoder accepts exactly what the public pydantic contract accepts."""
    fast, slow = _decoded_both_ways(raw, "binary")
    assert repr(fast) == repr(slow)


def _decoded_both_ways(raw: bytes, task: str) -> tuple[Event | None, Event | None]:
    """The event as the hot loop's decoder and as the pydantic contract read it (None: refused)."""
    try:
        fast = decode_event(raw, task)
    except InvalidEvent as error:
        assert str(error), "a refusal always gives its reason"
        fast = None
    try:
        slow = EventModel.model_validate_json(raw).to_event(task)
    except (ValidationError, InvalidEvent):
        slow = None
    return fast, slow


@pytest.mark.parametrize(
    "raw",
    [b'{"x": {"\\ud800": 1}}', b'{"x": {"a": "\\udc00"}}', b'{"x": {"a": 1}, "y": "\\ud83d", "ts": NaN}',
     b'{"x": {"a": 1}, "key": ["\\ud800"]}', b'{"x": {"a": 1}, "ts": NaN, "\\ud800": 1}'],
)  # fmt: skip
def test_an_escaped_lone_surrogate_anywhere_is_refused(raw):
    with pytest.raises(InvalidEvent, match=r"^not UTF-8 text: a string holds a lone surrogate$"):
        decode_event(raw, "multiclass")


def test_an_escaped_surrogate_pair_is_one_character_and_welcome():
    assert decode_event(b'{"x": {"\\ud83d\\ude00": 1}, "ts": 1}', "binary").x == {"\U0001f600": 1}


def test_the_reasons_are_worded_exactly():
    for raw, reason in [
        (b"\xff{}", "not UTF-8 text"),
        (b"[" * 100_000, "malformed JSON: nested too deeply"),
        (b'{"x": {"a": [1]}}', "feature 'a' must be a number, string or boolean, got list"),
    ]:
        with pytest.raises(InvalidEvent) as error:
            decode_event(raw, "binary")
        assert str(error.value) == reason


def test_text_decodes_like_bytes():
    assert decode_event('{"x": {"a": 1.5}, "ts": 2}', "binary").x == {"a": 1.5}
    with pytest.raises(InvalidEvent, match="feature 'a' is not a finite number"):
        decode_event('{"x": {"a": NaN}}', "binary")


def test_a_number_of_a_float_subclass_is_checked_like_a_float():
    assert validate_event({"x": {"a": np.float64(1.5)}}, "binary").x["a"] == 1.5
    with pytest.raises(InvalidEvent, match=r"^feature 'a' is not a finite number$"):
        validate_event({"x": {"a": np.float64("inf")}}, "binary")
    with pytest.raises(InvalidEvent, match=r"^feature 'a' must be a number, string or boolean, got ndarray$"):
        validate_event({"x": {"a": np.zeros(2)}}, "binary")


def test_labels_are_checked_against_the_task():
    assert decode_event(b'{"x": {}, "y": 1}', "binary").y is True
    assert decode_event(b'{"x": {}, "y": "cat"}', "multiclass").y == "cat"
    assert decode_event(b'{"x": {}, "y": 2.5}', "regression").y == 2.5
    with pytest.raises(InvalidEvent, match="regression task must be a number"):
        decode_event(b'{"x": {}, "y": true}', "regression")
    with pytest.raises(InvalidEvent, match="multiclass"):
        decode_event(b'{"x": {}, "y": 1.5}', "multiclass")


TASKS = [
    ("binary", ["preprocessing.StandardScaler", "linear_model.LogisticRegression"], lambda n: n % 2 == 0,
     {"y_pred", "y_proba"}),
    ("multiclass", ["tree.HoeffdingTreeClassifier"], lambda n: f"class-{n % 3}", {"y_pred", "y_proba"}),
    ("regression", ["linear_model.LinearRegression"], lambda n: n / 7, {"y_pred"}),
    ("anomaly", ["anomaly.HalfSpaceTrees"], lambda n: n % 10 == 0, {"score"}),
]  # fmt: skip


@pytest.mark.parametrize(("task", "pipeline", "label", "outputs"), TASKS, ids=[t[0] for t in TASKS])
def test_what_the_engine_publishes_for_every_task_is_a_valid_prediction_record(
    task, pipeline, label, outputs, tmp_path
):
    engine = Engine(
        Config.model_validate({"model": {"task": task, "pipeline": pipeline}}), SnapshotStore(tmp_path)
    )
    for n in range(60):
        event = validate_event(
            {"id": f"e-{n}", "key": "k", "x": {"a": (n % 5) / 5, "b": n % 3}, "y": label(n)}, task
        )
        published = encode_record(engine.process(event))
        record = PredictionRecord.model_validate_json(published)
        assert record.id == f"e-{n}" and record.key == "k" and record.model_version == 1
        assert record.y == event.y
        if n > 0:  # a model that has learned something gives every output of its task
            present = {name for name in ("y_pred", "y_proba", "score") if getattr(record, name) is not None}
            assert present == outputs, published


def test_numbers_python_cannot_hold_are_rejected_not_raised():
    with pytest.raises(InvalidEvent, match="malformed JSON"):
        decode_event(b'{"x": {"a": ' + b"9" * 5000 + b"}}", "binary")
    with pytest.raises(InvalidEvent, match="not a finite number"):
        decode_event(b'{"x": {"a": 1}, "y": ' + b"9" * 400 + b"}", "regression")


# -- properties: the fast decoder against the pydantic contract, for any JSON -------------------

# Integers stay within 64 bits: beyond, orjson reads them as floats (the documented difference).
integers = st.integers(min_value=-(2**63), max_value=2**64 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | integers | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
feature_maps = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
# Each field is mostly of a type the contract allows, so that many events get past every check.
scalars = st.booleans() | integers | st.floats() | st.text(max_size=6)
labels = st.one_of(st.booleans(), st.integers(0, 1), st.text(max_size=3), scalars, json_values)
valid_features = st.dictionaries(st.text(max_size=6), scalars, max_size=4)
events = st.fixed_dictionaries(
    {"x": st.one_of(valid_features, valid_features, valid_features, feature_maps, json_values)},
    optional={
        "y": labels,
        "id": st.one_of(st.text(max_size=6), integers, json_values),
        "key": st.one_of(st.text(max_size=6), st.text(max_size=6), json_values),
        "ts": st.one_of(st.text(max_size=6), st.floats(), integers, json_values),
    },
)
events_with_extra_fields = st.builds(lambda event, extra: {**extra, **event}, events, feature_maps)


@settings(deadline=None)
@example(payload={"x": {}, "ts": math.nan}, task="binary", ascii_only=True)
@example(payload={"x": {"\ud800": 1}, "y": 1.5}, task="regression", ascii_only=False)
@example(payload={"x": {"a": 1}, "y": -(2**63)}, task="multiclass", ascii_only=True)
@given(
    payload=st.one_of(events, events, events, events_with_extra_fields, json_values),
    task=st.sampled_from(["binary", "multiclass", "regression", "anomaly"]),
    ascii_only=st.booleans(),
)
def test_fast_decoder_agrees_with_the_pydantic_contract_on_any_json(payload, task, ascii_only):
    """Same accept/refuse and the same values, for any JSON document and any task."""
    raw = json.dumps(payload, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    fast, slow = _decoded_both_ways(raw, task)
    assert repr(fast) == repr(slow)  # repr, not ==: True == 1 == 1.0, but the types must agree too


@settings(deadline=None)
@example(raw=b'\xef\xbb\xbf{"x": {}}', task="binary")
@example(raw=b'{"x": {"\xed\xa0\x80": 1}}', task="binary")
@example(raw=b'{"x": {}, "y": 1, "y": true}', task="regression")
@given(
    raw=st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode)).map(
        lambda tail: b'{"x": {}' + tail
    )
    | st.binary(max_size=60),
    task=st.sampled_from(["binary", "regression"]),
)
def test_any_bytes_are_refused_or_accepted_alike_by_decoder_and_contract(raw, task):
    fast, slow = _decoded_both_ways(raw, task)
    assert repr(fast) == repr(slow)  # repr, not ==: True == 1 == 1.0, but the types must agree too


def test_records_with_numpy_numbers_bool_keys_and_huge_integers_are_written_as_json():
    assert encode_record({"score": np.float32(0.25), "y_proba": {False: 0.75, True: np.float64(0.25)}}) == (
        b'{"score":0.25,"y_proba":{"false":0.75,"true":0.25}}'
    )
    assert encode_record({"id": "e", "y": 2**70}) == b'{"id":"e","y":1180591620717411303424}'
    with pytest.raises(InvalidEvent, match="cannot be written as JSON"):
        encode_record({"id": "e", "y": object()})


def test_a_record_only_the_fallback_can_write_is_refused_rather_than_written_with_nan():
    with pytest.raises(InvalidEvent) as refused:
        encode_record({"id": "e", "y": 2**70, "score": math.nan})  # NaN is not JSON
    assert str(refused.value) == (
        "the prediction cannot be written as JSON: Out of range float values are not JSON compliant"
    )


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_utf16_and_utf32_events_are_refused_as_not_utf8(encoding):
    raw = '{"x": {"a": 1}, "y": true}'.encode(encoding)
    assert json.loads(raw) == {"x": {"a": 1}, "y": True}  # the standard library would read it
    with pytest.raises(InvalidEvent, match=r"^not UTF-8 text"):
        decode_event(raw, "binary")
    assert _decoded_both_ways(raw, "binary") == (None, None)  # and the contract refuses it too
