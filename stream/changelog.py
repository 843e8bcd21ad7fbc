"""Delayed labels, exactly once: the order of learning and the join's state, kept in Kafka.

With labels on their own topic, a model learns in the order labels and labelled events happened
to be read from two partitions; reading them again after a crash would not give that order back.
So each partition's owner writes two internal topics, co-partitioned with the input (its
partition p only ever written by the owner of p), in the transaction that commits p's offsets:

- **examples** (``<group>.<input>.examples``): every example the model learned, in the order it
  learned them: features, label, id, and for a joined label the prediction made at event time.
  A restore loads a checkpoint, then learns the examples written after it (by sequence number),
  so the model is the one of the last commit, whatever order the inputs are read in again. It is
  also what ``stream rebuild`` trains a fresh model from (across a River upgrade, say).
- **join** (``<group>.<input>.join``, compacted): each change of the join (an event waiting, a
  label held, an id remembered, each one's removal as a tombstone, and the counters), written
  once per key per commit. A restore reads it whole: the join as of the last commit, however
  many events wait, and a checkpoint never copies them (its cost does not grow with them).

>>> from stream.events import Event
>>> prediction = {"y_pred": False, "y_proba": {False: 0.6, True: 0.4}}
>>> raw = encode_example(7, Event(x={"f": 0.5}, y=True, id="e-1"), prediction)
>>> seq, event, prediction = decode_example(raw)
>>> seq, event.x, event.y, prediction["y_proba"]
(7, {'f': 0.5}, True, {False: 0.6, True: 0.4})
>>> decode_example(encode_example(8, Event(x={"big": 2**70}, y=1, id="e-2"), None))[1].x  # not a float
{'big': 1180591620717411303424}
"""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson

from connectors.base import Message
from stream.events import Event
from stream.join import HELD, METER, RECENT, WAITING, HeldLabel, WaitingEvent

# orjson writes integers of up to 64 bits and reads larger ones as floats; a record holding one is
# written by json, marked so, and read back by json: exactly what was learned.
_BY_JSON = b"J"


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return _BY_JSON + json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _loads(raw: bytes) -> Any:
    return json.loads(raw[1:]) if raw[:1] == _BY_JSON else orjson.loads(raw)


def _pairs(prediction: dict[str, Any]) -> list[list[Any]]:
    """A prediction as pairs: its class labels (booleans, integers, strings) keep their types,
    which JSON object keys would not."""
    return [
        [name, [[label, p] for label, p in value.items()] if name == "y_proba" else value]
        for name, value in prediction.items()
    ]


def _prediction(pairs: list[list[Any]]) -> dict[str, Any]:
    return {name: {label: p for label, p in value} if name == "y_proba" else value for name, value in pairs}


def encode_example(seq: int, event: Event, prediction: dict[str, Any] | None) -> bytes:
    """An example learned, ``seq``-th of its partition; ``prediction``: a joined label's."""
    return _dumps(
        {
            "seq": seq,
            "id": event.id,
            "x": event.x,
            "y": event.y,
            "prediction": None if prediction is None else _pairs(prediction),
        }
    )


def decode_example(raw: bytes) -> tuple[int, Event, dict[str, Any] | None]:
    record = _loads(raw)
    prediction = record["prediction"]
    event = Event(x=record["x"], y=record["y"], id=record["id"])
    return record["seq"], event, None if prediction is None else _prediction(prediction)


def _message(origin: Message) -> list[Any]:
    encode = base64.b64encode
    key = None if origin.key is None else encode(origin.key).decode()
    value = None if origin.value is None else encode(origin.value).decode()
    return [origin.topic, origin.partition, origin.offset, key, value, origin.timestamp_ms]


def _origin(fields: list[Any]) -> Message:
    topic, partition, offset, key, value, timestamp_ms = fields
    decode = base64.b64decode
    return Message(
        topic,
        partition,
        offset,
        None if key is None else decode(key),
        None if value is None else decode(value),
        timestamp_ms,
    )


def encode_join_entry(key: str, entry: Any) -> bytes | None:
    """A change of a join (:meth:`stream.join.Join.take_changes`) as a record value; None (a
    tombstone) for an entry that is gone."""
    if entry is None:
        return None
    kind = key if key == METER else key[:2]
    if kind == WAITING:
        return _dumps([entry.x, _pairs(entry.prediction), entry.since, entry.seen, entry.ts])
    if kind == HELD:
        return _dumps([entry.y, entry.since, entry.seen, entry.ts, _message(entry.origin)])
    return _dumps(entry)  # RECENT: (outcome, when); METER: the counters


def decode_join_entry(key: str, raw: bytes | None) -> Any:
    if raw is None:
        return None
    value = _loads(raw)
    kind = key if key == METER else key[:2]
    if kind == WAITING:
        x, prediction, since, seen, ts = value
        return WaitingEvent(x, _prediction(prediction), since, seen, ts)
    if kind == HELD:
        y, since, seen, ts, origin = value
        return HeldLabel(y, since, seen, ts, _origin(origin))
    if kind == RECENT:
        return tuple(value)
    return value
