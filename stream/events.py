"""Events in, predictions out: the public JSON contract and its fast decoder.

An event is ``{"id": "e-1", "x": {"f1": 0.3, "color": "red"}, "y": true, "key": "k", "ts": "..."}``:
``x`` is required (numbers, strings, booleans); ``y`` is optional (absent means predict only);
``id``, ``key`` and ``ts`` are optional.

The pydantic models :class:`EventModel` and :class:`PredictionRecord` document the contract and
validate at the API boundary. The hot loop uses :func:`decode_event`, plain Python that accepts
and rejects what :class:`EventModel` does (property tests check that they agree on any JSON;
integers beyond 64 bits aside, which orjson reads as floats) at a fraction of the cost
(``benchmarks/engine.py`` measures it).

>>> event = decode_event(b'{"id": "e-1", "x": {"f1": 0.3, "color": "red"}, "y": true}', "binary")
>>> event.id, event.x, event.y
('e-1', {'f1': 0.3, 'color': 'red'}, True)
>>> decode_event(b'{"x": {"f1": NaN}}', "binary")
Traceback (most recent call last):
...
stream.errors.InvalidEvent: feature 'f1' is not a finite number
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stream.config import Task
from stream.errors import InvalidEvent

FeatureValue = float | int | str | bool
Label = bool | int | float | str


@dataclass(slots=True)
class Event:
    """A decoded, validated event as the engine uses it."""

    x: dict[str, FeatureValue]
    y: Label | None = None
    id: str | None = None
    key: str | None = None
    ts: str | float | None = None


def check_label(y: Any, task: Task) -> Label | None:
    """``y`` as the task's label (0/1 read as booleans for binary tasks); raises
    :class:`InvalidEvent` with the reason. Events and labels (:mod:`stream.labels`) share it."""
    if y is None:
        return None
    if task in ("binary", "anomaly"):
        if isinstance(y, bool):
            return y
        if isinstance(y, int) and y in (0, 1):
            return bool(y)
        raise InvalidEvent(f"label for a {task} task must be true/false or 0/1, got {y!r}")
    if task == "multiclass":
        if isinstance(y, str | bool | int):
            return y
        raise InvalidEvent(f"label for a multiclass task must be a string, integer or boolean, got {y!r}")
    if isinstance(y, bool) or not isinstance(y, int | float):
        raise InvalidEvent(f"label for a regression task must be a number, got {y!r}")
    try:
        finite = math.isfinite(y)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise InvalidEvent("label is not a finite number")
    return y


def _check_feature_subclass(name: str, value: Any) -> None:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidEvent(f"feature {name!r} is not a finite number")
    elif not isinstance(value, int | str):  # bool is an int
        kind = type(value).__name__
        raise InvalidEvent(f"feature {name!r} must be a number, string or boolean, got {kind}")


def validate_event(payload: Any, task: Task) -> Event:
    """Check a parsed JSON value against the event contract and return an :class:`Event`."""
    if not isinstance(payload, dict):
        raise InvalidEvent(f"an event must be a JSON object, got {type(payload).__name__}")
    x = payload.get("x")
    if x is None:
        raise InvalidEvent("missing required field 'x'")
    if not isinstance(x, dict):
        raise InvalidEvent(f"'x' must be an object of features, got {type(x).__name__}")
    isfinite = math.isfinite
    for name, value in x.items():
        kind = type(value)  # exact types first: what a JSON parser makes, and 3x faster than isinstance
        if kind is float:
            if not isfinite(value):
                raise InvalidEvent(f"feature {name!r} is not a finite number")
        elif kind is not int and kind is not str and kind is not bool:
            _check_feature_subclass(name, value)
    if not _EVENT_FIELDS.issuperset(payload):
        unknown = payload.keys() - _EVENT_FIELDS
        raise InvalidEvent(f"unknown field(s): {', '.join(map(repr, sorted(unknown)))}")
    event_id = payload.get("id")
    if event_id is not None and (isinstance(event_id, bool) or not isinstance(event_id, str | int)):
        raise InvalidEvent("'id' must be a string or an integer")
    key = payload.get("key")
    if key is not None and not isinstance(key, str):
        raise InvalidEvent("'key' must be a string")
    ts = payload.get("ts")
    if ts is not None and (
        isinstance(ts, bool)
        or not isinstance(ts, str | int | float)
        or (type(ts) is float and not isfinite(ts))
    ):
        raise InvalidEvent("'ts' must be a string or a finite number")
    return Event(
        x=x,
        y=check_label(payload.get("y"), task),
        id=None if event_id is None else str(event_id),
        key=key,
        ts=ts,
    )


_EVENT_FIELDS = frozenset({"id", "x", "y", "key", "ts"})


def decode_event(raw: bytes | bytearray | memoryview | str, task: Task) -> Event:
    """Parse one JSON event and validate it; raises :class:`InvalidEvent` with the reason.

    orjson parses (about 7x faster than :mod:`json` here). What it refuses goes to :mod:`json`,
    which words the error, or reads ``NaN`` and ``Infinity`` (refused then as numbers that are not
    finite). Text must be UTF-8 without lone surrogates or a byte-order mark, as for the pydantic
    contract: a string that cannot be written back as UTF-8 would break whatever carries it on.
    """
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = decode_with_json(raw)
    return validate_event(payload, task)


def _utf8_text(raw: bytes | bytearray | memoryview) -> str:
    """``raw`` read strictly as UTF-8. UTF-16 and UTF-32 (which :mod:`json` would detect and read)
    are refused as such: their ASCII characters hold NUL bytes, which JSON text never does."""
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent("not UTF-8 text") from None
    if "\x00" in text:
        raise InvalidEvent("not UTF-8 text: it holds NUL bytes, as UTF-16 and UTF-32 do")
    return text


def decode_with_json(raw: bytes | bytearray | memoryview | str) -> Any:
    """What orjson refused, parsed by :mod:`json` (which words the error) under the same rules."""
    text = raw if isinstance(raw, str) else _utf8_text(raw)
    try:
        payload = json.loads(text)
        lone_surrogate = _has_lone_surrogate(payload)
    except json.JSONDecodeError as error:
        raise InvalidEvent(f"malformed JSON: {error}") from None
    except RecursionError:
        raise InvalidEvent("malformed JSON: nested too deeply") from None
    except ValueError as error:  # e.g. an integer literal over Python's digit limit
        raise InvalidEvent(f"malformed JSON: {error}") from None
    if lone_surrogate:
        raise InvalidEvent("not UTF-8 text: a string holds a lone surrogate")
    return payload


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(key) or _has_lone_surrogate(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    return False


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def encode_record(record: dict[str, Any]) -> bytes:
    """A prediction or dead letter as compact JSON (orjson; :mod:`json` for what it cannot write).

    Raises :class:`InvalidEvent` if the record cannot be written. Callers make sure numbers are
    finite: orjson would write ``NaN`` as ``null``.

    >>> encode_record({"id": "e-1", "y_pred": True, "y_proba": {False: 0.25, True: 0.75}})
    b'{"id":"e-1","y_pred":true,"y_proba":{"false":0.25,"true":0.75}}'
    """
    try:
        return orjson.dumps(record, option=_ORJSON_OPTIONS)
    except TypeError:  # say, an integer beyond 64 bits
        try:
            return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as error:
            raise InvalidEvent(f"the prediction cannot be written as JSON: {error}") from None


class EventModel(BaseModel):
    """The event contract as a pydantic model (API bodies, JSON schema).

    >>> EventModel.model_validate({"x": {"f1": 1.5}, "y": True}).y
    True
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | int | None = None
    x: dict[str, bool | int | float | str]
    y: bool | int | float | str | None = None
    key: str | None = None
    ts: str | int | float | None = None

    @model_validator(mode="after")
    def _finite_numbers(self) -> EventModel:
        for name, value in self.x.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"feature {name!r} is not a finite number")
        if isinstance(self.ts, float) and not math.isfinite(self.ts):
            raise ValueError("'ts' must be a string or a finite number")
        return self

    def to_event(self, task: Task) -> Event:
        return validate_event(self.model_dump(), task)  # None and absent are the same to it


class PredictionRecord(BaseModel):
    """What is published for every event (one JSON object per prediction).

    ``y_proba`` is set for classifiers, ``score`` for anomaly detectors; ``y`` is the label that
    was learned (absent when the event had none); ``model_version`` counts model switches
    (rollbacks, resets) so a prediction names the model that made it.
    """

    id: str
    key: str | None = None
    y_pred: Label | None = None
    y_proba: dict[str, float] | None = None
    score: float | None = None
    y: Label | None = None
    model_version: int = Field(ge=1)
