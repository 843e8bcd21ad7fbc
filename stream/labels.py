"""Labels that come later, on their own: the public JSON contract and its fast decoder.

A label is ``{"id": "e-1", "y": true, "ts": "2026-12-01T10:00:05Z"}``: ``id`` names the event it
belongs to and ``y`` is validated against the task exactly as an event's label is; ``ts``
(optional) is when it was known, an ISO 8601 string or seconds since the epoch, used for the
label delay and, in a replay, to merge labels with events. Labels are keyed like their events, so
both land on the same partition number of their co-partitioned topics.

:class:`LabelModel` is the contract; :func:`decode_label` (the hot loop's) accepts and refuses
what it does, which a test checks.

>>> label = decode_label(b'{"id": "e-1", "y": 1, "ts": 1700000000.5}', "binary")
>>> label.id, label.y, label.ts
('e-1', True, 1700000000.5)
>>> decode_label(b'{"y": true}', "binary")
Traceback (most recent call last):
...
stream.errors.InvalidEvent: a label needs an 'id': the id of its event
>>> epoch_seconds("2026-12-01T10:00:05Z"), epoch_seconds(None)
(1796119205.0, None)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, model_validator

from stream.config import Task
from stream.errors import InvalidEvent
from stream.events import Label, check_label, decode_with_json

# Seconds since the epoch beyond which a ``ts`` is not a time (the year 33,658).
MAX_EPOCH_SECONDS = 1e12


@dataclass(slots=True)
class LabelMessage:
    """A decoded, validated label."""

    id: str
    y: Label
    ts: str | float | int | None = None


_LABEL_FIELDS = frozenset({"id", "y", "ts"})


def validate_label(payload: Any, task: Task) -> LabelMessage:
    """Check a parsed JSON value against the label contract."""
    if not isinstance(payload, dict):
        raise InvalidEvent(f"a label must be a JSON object, got {type(payload).__name__}")
    if not _LABEL_FIELDS.issuperset(payload):
        unknown = payload.keys() - _LABEL_FIELDS
        raise InvalidEvent(f"unknown field(s) in a label: {', '.join(map(repr, sorted(unknown)))}")
    label_id = payload.get("id")
    if label_id is None:
        raise InvalidEvent("a label needs an 'id': the id of its event")
    if isinstance(label_id, bool) or not isinstance(label_id, str | int):
        raise InvalidEvent("'id' must be a string or an integer")
    y = check_label(payload.get("y"), task)
    if y is None:
        raise InvalidEvent("a label needs a 'y'")
    ts = payload.get("ts")
    if ts is not None and (
        isinstance(ts, bool)
        or not isinstance(ts, str | int | float)
        or (isinstance(ts, float) and not math.isfinite(ts))
    ):
        raise InvalidEvent("'ts' must be a string or a finite number")
    return LabelMessage(id=str(label_id), y=y, ts=ts)


def decode_label(raw: bytes | bytearray | memoryview | str, task: Task) -> LabelMessage:
    """Parse one JSON label and validate it; raises :class:`InvalidEvent` with the reason."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = decode_with_json(raw)
    return validate_label(payload, task)


def epoch_seconds(ts: str | float | int | None) -> float | None:
    """A ``ts`` as seconds since the epoch: numbers are; ISO 8601 strings are read (UTC unless
    they say otherwise); None, a string that is not a date, or a number no clock gives (beyond
    :data:`MAX_EPOCH_SECONDS` either way) gives None."""
    if ts is None:
        return None
    if isinstance(ts, int | float):
        return float(ts) if -MAX_EPOCH_SECONDS <= ts <= MAX_EPOCH_SECONDS else None
    try:
        moment = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class LabelModel(BaseModel):
    """The label contract as a pydantic model (JSON schema, API bodies).

    >>> LabelModel.model_validate({"id": "e-1", "y": "spam"}).y
    'spam'
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | int
    y: bool | int | float | str
    ts: str | int | float | None = None

    @model_validator(mode="after")
    def _finite_numbers(self) -> LabelModel:
        if isinstance(self.ts, float) and not math.isfinite(self.ts):
            raise ValueError("'ts' must be a string or a finite number")
        return self

    def to_label(self, task: Task) -> LabelMessage:
        return validate_label(self.model_dump(exclude_none=True), task)
