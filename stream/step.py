"""One record through the engine: decode, validate, name, predict, publish, learn.

The service (for each Kafka record, and again when it re-learns after a restore) and
``stream replay`` (for each line of a file) run every record through :class:`RecordStep`, so
both check the same things in the same order:

1. an empty record and one over ``service.max_event_bytes`` are refused;
2. the bytes are decoded and validated (:func:`stream.events.decode_event`; a CSV row, already a
   mapping, is validated as it is), and held to ``limits`` (features per event, label length);
3. an event without an ``id`` is named after where it came from (``prefix`` + position);
4. the engine predicts, learns, then hands the prediction to ``emit`` (:meth:`Engine.process`).

A record that fails any of these is counted on the engine as an error, and the step returns the
reason; the caller writes the dead letter where its records go. So does an earlier record whose
learning broke the model, found now (:meth:`Engine.take_unlearned` hands it over with the
``origin`` it was processed with).

>>> import tempfile
>>> from stream.config import Config
>>> from stream.snapshots import SnapshotStore
>>> config = Config.model_validate({"service": {"max_event_bytes": 40}})
>>> engine, step = Engine(config, SnapshotStore(tempfile.mkdtemp())), RecordStep(config)
>>> sent = []
>>> step(engine, b'{"x": {"a": 1.0}, "y": true}', "events-0-", 7, sent.append), sent[0]["id"]
(None, 'events-0-7')
>>> step(engine, b'{"x": {"a": "' + b"a" * 40 + b'"}}', "events-0-", 8)
'event of 56 bytes exceeds service.max_event_bytes=40'
>>> engine.state.events, engine.state.errors
(1, 1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stream.config import Config
from stream.errors import InvalidEvent
from stream.events import decode_event, validate_event
from stream.prequential import Engine

Emit = Callable[[dict[str, Any]], Any]


class RecordStep:
    """Applies the per-record step of the configured task and size limit to any engine."""

    def __init__(self, config: Config) -> None:
        self.task = config.model.task
        self.max_event_bytes = config.service.max_event_bytes
        self.max_features = config.limits.max_features
        self.max_label_chars = config.limits.max_label_chars

    def __call__(
        self,
        engine: Engine,
        raw: bytes | dict[str, Any] | None,
        prefix: str,
        position: int,
        emit: Emit | None = None,
        origin: Any = None,
    ) -> str | None:
        """Run one record; ``None`` when it was used, else the reason it was refused."""
        try:
            if raw is None:
                raise InvalidEvent("empty message (no value)")
            if isinstance(raw, dict):
                event = validate_event(raw, self.task)
            else:
                if len(raw) > self.max_event_bytes:
                    raise InvalidEvent(
                        f"event of {len(raw)} bytes exceeds service.max_event_bytes={self.max_event_bytes}"
                    )
                event = decode_event(raw, self.task)
            if len(event.x) > self.max_features:
                raise InvalidEvent(
                    f"event has {len(event.x)} features; limits.max_features={self.max_features}"
                )
            if type(event.y) is str and len(event.y) > self.max_label_chars:
                raise InvalidEvent(
                    f"label of {len(event.y)} characters; limits.max_label_chars={self.max_label_chars}"
                )
            if event.id is None:
                event.id = f"{prefix}{position}"
            engine.process(event, emit, origin, 0 if isinstance(raw, dict) else len(raw))
        except InvalidEvent as error:
            engine.record_error()
            return str(error)
        return None
