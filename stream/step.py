"""One record through the engine: decode, validate, name, predict, publish, learn.

The service (for each Kafka record, and again when it re-learns after a restore) and
``stream replay`` (for each line of a file) run every record through :class:`RecordStep`, so
both check the same things in the same order:

1. an empty record and one over ``service.max_event_bytes`` are refused;
2. the bytes are decoded and validated (:func:`stream.events.decode_event`; a CSV row, already a
   mapping, is validated as it is), and held to ``limits`` (features per event, label length);
3. an event without an ``id`` is named after where it came from (``prefix`` + position);
4. the engine predicts, learns, then hands the prediction to ``emit`` (:meth:`Engine.process`);
   with delayed labels (a :class:`~stream.join.Join`), an event without ``y`` is predicted and
   published, then waits for its label, which comes through :meth:`RecordStep.label`.

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
from stream.events import Event, decode_event, validate_event
from stream.join import Join
from stream.labels import decode_label, epoch_seconds, validate_label
from stream.prequential import Engine

Emit = Callable[[dict[str, Any]], Any]


class RecordStep:
    """Applies the per-record step of the configured task and size limit to any engine; with a
    :class:`~stream.join.Join`, events without ``y`` wait for their labels, which come through
    :meth:`label`."""

    def __init__(
        self,
        config: Config,
        join: Join | None = None,
        on_learning: Callable[[Event, dict[str, Any] | None], None] | None = None,
    ) -> None:
        """``on_learning``, with a join: told each example about to be learned, in order, with
        the prediction made when its event came if it is a joined label's. Before, as a claim
        is: a snapshot taken while it is learned (a drift's) holds it as learned. One the model
        then refuses leaves no trace, so learning it again (a restore does) changes nothing."""
        self.task = config.model.task
        self.max_event_bytes = config.service.max_event_bytes
        self.max_features = config.limits.max_features
        self.max_label_chars = config.limits.max_label_chars
        self.join = join
        self.on_learning = on_learning

    def __call__(
        self,
        engine: Engine,
        raw: bytes | dict[str, Any] | None,
        prefix: str,
        position: int,
        emit: Emit | None = None,
        origin: Any = None,
        now: float = 0.0,
    ) -> str | None:
        """Run one event; ``None`` when it was used, else the reason it was refused. ``now``: the
        clock the join's time bounds are measured by."""
        try:
            raw = self._sized(raw)
            event = validate_event(raw, self.task) if isinstance(raw, dict) else decode_event(raw, self.task)
            if len(event.x) > self.max_features:
                raise InvalidEvent(
                    f"event has {len(event.x)} features; limits.max_features={self.max_features}"
                )
            self._check_label_length(event.y)
            if event.id is None:
                event.id = f"{prefix}{position}"
            size = 0 if isinstance(raw, dict) else len(raw)
            if self.join is None:
                engine.process(event, emit, origin, size)
            else:
                self._event_with_join(self.join, engine, event, emit, origin, size, now)
        except InvalidEvent as error:
            engine.record_error()
            return str(error)
        return None

    def label(
        self, engine: Engine, raw: bytes | dict[str, Any] | None, origin: Any = None, now: float = 0.0
    ) -> str | None:
        """Run one label (a join is required); ``None`` when it was used (learned, held, or a
        duplicate), else the reason it is a dead letter. Orphans found later are the join's."""
        join = self.join
        assert join is not None, "labels need a join"
        try:
            raw = self._sized(raw, "label")
            label = validate_label(raw, self.task) if isinstance(raw, dict) else decode_label(raw, self.task)
            self._check_label_length(label.y)
            label_ts = epoch_seconds(label.ts)
            waiting = join.label_came(label.id, label.y, now, origin, label_ts)
            if waiting is None:
                return None
            example = Event(x=waiting.x, y=label.y, id=label.id)
            if self.on_learning is not None:
                self.on_learning(example, waiting.prediction)
            try:
                engine.learn_joined(example, waiting.prediction, origin)
            except InvalidEvent as error:
                join.refused(label.id, now)
                return f"the model cannot learn event {label.id!r} with this label: {error}"
            event_time = waiting.since if waiting.ts is None else waiting.ts
            join.joined(label.id, now, event_time, now if label_ts is None else label_ts)
        except InvalidEvent as error:
            join.counts.invalid_labels += 1
            return str(error)
        return None

    def _event_with_join(
        self, join: Join, engine: Engine, event: Event, emit: Emit | None, origin: Any, size: int, now: float
    ) -> None:
        assert event.id is not None
        if join.is_waiting(event.id):
            raise InvalidEvent(f"an event with id {event.id!r} is already waiting for its label")
        held = join.event_came(event.id, now)
        if held is not None and event.y is not None:
            join.counts.duplicates += 1  # the event brought its own label: the held one is not needed
            held = None
        elif held is not None:
            event.y = held.y
        event_ts = epoch_seconds(event.ts)
        if event.y is None:
            prediction = engine.answer(event)
            if emit is not None:
                emit(prediction)
            join.wait(event.id, event.x, prediction, now, event_ts)
            return
        if self.on_learning is not None:
            self.on_learning(event, None)
        try:
            engine.process(event, emit, origin, size)
        except InvalidEvent as error:
            if held is not None:
                join.orphan(held.origin, f"its event {event.id!r} was refused: {error}")
            raise
        if held is None:
            join.learned_at_once(event.id, now)
        else:
            label_time = held.since if held.ts is None else held.ts
            join.joined(event.id, now, now if event_ts is None else event_ts, label_time)

    def _sized(self, raw: bytes | dict[str, Any] | None, kind: str = "event") -> bytes | dict[str, Any]:
        if raw is None:
            raise InvalidEvent("empty message (no value)")
        if not isinstance(raw, dict) and len(raw) > self.max_event_bytes:
            raise InvalidEvent(
                f"{kind} of {len(raw)} bytes exceeds service.max_event_bytes={self.max_event_bytes}"
            )
        return raw

    def _check_label_length(self, y: Any) -> None:
        if type(y) is str and len(y) > self.max_label_chars:
            raise InvalidEvent(f"label of {len(y)} characters; limits.max_label_chars={self.max_label_chars}")
