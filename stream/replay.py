"""Replay: the engine over a file of events, without Kafka.

Each record goes through the same per-record step as the service (:class:`stream.step.RecordStep`:
size check, decode and validate, default id, predict, write, learn). Records that cannot be used
become dead letters (reason, position, original text) and are counted; they never stop the run.
An event without an ``id`` is named after its position in the file (line or row number). The
summary holds the counts, metrics, drifts, snapshots and rollbacks.

Delayed labels (:mod:`stream.join`) replay too, in one of two orders:

- ``labels`` in a file of their own (JSONL or CSV, ``{id, y, ts}``): events and labels are merged
  by ``ts`` (each file in ``ts`` order; a record without one takes the ``ts`` before it in its
  file), a label before an event of the same ``ts``: as River's ``simulate_qa`` reveals an answer
  due at a question's moment before the question;
- ``inline_labels``: label records (no ``x``; ``id`` and ``y``) among the events, in file order.

The join's clock is the records' ``ts`` (``labels.max_wait_seconds`` counts in it); events
still waiting at the end stay unlearned (counted as waiting), labels still held are orphans.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson

from connectors.files import read_events
from stream.config import Config
from stream.dead_letters import dead_letter
from stream.events import InvalidEvent, decode_with_json, encode_record
from stream.join import Join, JoinSummary
from stream.labels import epoch_seconds
from stream.prequential import Engine, LearnerSummary
from stream.snapshots import SnapshotStore
from stream.step import RecordStep

logger = logging.getLogger(__name__)
REJECTIONS_LOGGED = 10


class ReplaySummary(LearnerSummary):
    """A replay's summary: the engine's, and the join's when labels came on their own."""

    labels: JoinSummary | None = None


class Record(NamedTuple):
    """A record to replay: an event, or a label (``is_label``), and the join's clock at it."""

    position: int
    raw: bytes | dict[str, Any]
    is_label: bool = False
    clock: float = 0.0


def run_replay(
    records: Iterable[tuple[int, bytes | dict[str, Any]]] | Iterable[Record],
    engine: Engine,
    predictions: IO[str] | None = None,
    dead_letters: IO[str] | None = None,
    on_progress: Callable[[int], None] | None = None,
    join: Join | None = None,
) -> ReplaySummary:
    """Drive ``engine`` over ``(position, record)`` pairs, or :class:`Record` s with ``join``;
    return the summary."""
    step = RecordStep(engine.config, join)
    # Written once the event is learned (or, waiting for its label, predicted), as the service does.
    emit = None if predictions is None else lambda p: predictions.write(encode_record(p).decode() + "\n")
    max_bytes = engine.config.service.max_event_bytes
    rejected = 0

    def refuse(position: int, raw: bytes | dict[str, Any], reason: str, file: str = "input") -> None:
        nonlocal rejected
        rejected += 1
        if rejected <= REJECTIONS_LOGGED:
            logger.warning("%s record %d rejected: %s", file, position, reason)
        if dead_letters is not None:
            source = {"position": position} if file == "input" else {"file": file, "position": position}
            record = dead_letter(reason, raw, source, max_bytes)
            dead_letters.write(encode_record(record).decode() + "\n")

    for record in records:
        position, raw = record[0], record[1]
        if join is not None and record[2]:  # a label
            reason = step.label(engine, raw, (position, raw, "labels"), record[3])
            if reason is not None:
                refuse(position, raw, reason, "labels")
        else:
            now = record[3] if join is not None else 0.0
            reason = step(engine, raw, "", position, emit, (position, raw, "input"), now)
            if reason is not None:
                refuse(position, raw, reason)
            elif on_progress is not None:
                on_progress(position)
        for (culprit_position, culprit_raw, file), why in engine.take_unlearned():
            refuse(culprit_position, culprit_raw, why, file)
        if join is not None:
            for (orphan_position, orphan_raw, file), why in join.take_orphans():
                refuse(orphan_position, orphan_raw, why, file)
    if join is None:
        return engine.summary(ReplaySummary)
    join.close()
    for (orphan_position, orphan_raw, file), why in join.take_orphans():
        refuse(orphan_position, orphan_raw, why, file)
    return engine.summary(ReplaySummary, labels=join.summary())


def _ts_of(raw: bytes | dict[str, Any]) -> tuple[dict[str, Any] | None, float | None]:
    """A record parsed (None if it is not a JSON object) and its ``ts`` in seconds, if any."""
    if isinstance(raw, dict):
        parsed: Any = raw
    else:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            try:
                parsed = decode_with_json(raw)
            except InvalidEvent:  # the step will say why
                return None, None
    if not isinstance(parsed, dict):
        return None, None
    ts = parsed.get("ts")
    return parsed, epoch_seconds(ts) if isinstance(ts, str | int | float) and not isinstance(
        ts, bool
    ) else None


def _clocked(records: Iterable[tuple[int, bytes | dict[str, Any]]], is_label: bool) -> Iterator[Record]:
    clock = float("-inf")
    for position, raw in records:
        if is_label and isinstance(raw, dict) and not raw.get("x"):  # a CSV row of id, y, ts
            raw = {name: value for name, value in raw.items() if name != "x"}
        ts = _ts_of(raw)[1]
        if ts is not None and ts > clock:
            clock = ts
        yield Record(position, raw, is_label, clock if clock != float("-inf") else 0.0)


def with_labels_file(
    events: Iterable[tuple[int, bytes | dict[str, Any]]], labels: Iterable[tuple[int, bytes | dict[str, Any]]]
) -> Iterator[Record]:
    """Events and labels merged by ``ts``, a label first at equal ``ts`` (see the module docstring)."""
    return heapq.merge(
        _clocked(labels, True),
        _clocked(events, False),
        key=lambda record: (record.clock, not record.is_label),
    )


def with_inline_labels(records: Iterable[tuple[int, bytes | dict[str, Any]]]) -> Iterator[Record]:
    """Events and label records (no ``x``; ``id`` and ``y``) of one file, in file order."""
    clock = 0.0
    for position, raw in records:
        parsed, ts = _ts_of(raw)
        if ts is not None and ts > clock:
            clock = ts
        is_label = parsed is not None and "x" not in parsed and "y" in parsed
        yield Record(position, raw, is_label, clock)


def replay_file(
    input_path: Path | str,
    config: Config,
    output: Path | None = None,
    dead_letters: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    labels: Path | None = None,
    inline_labels: bool = False,
) -> ReplaySummary:
    """Replay a JSONL/CSV file with ``config``; predictions and dead letters go to files if given.
    With ``labels`` (a file of labels) or ``inline_labels``, events without ``y`` wait for them."""
    engine = Engine(config, SnapshotStore.from_config(config.snapshots))
    join = Join(config.labels) if labels is not None or inline_labels else None
    records: Iterable[Any] = read_events(input_path)
    if labels is not None:
        records = with_labels_file(records, read_events(labels))
    elif inline_labels:
        records = with_inline_labels(records)
    with (
        open(output, "w") if output else nullcontext() as predictions_file,
        open(dead_letters, "w") if dead_letters else nullcontext() as dead_letter_file,
    ):
        return run_replay(records, engine, predictions_file, dead_letter_file, on_progress, join)
