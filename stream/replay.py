"""Replay: the engine over a file of events, without Kafka.

Each record goes through the same per-record step as the service (:class:`stream.step.RecordStep`:
size check, decode and validate, default id, predict, write, learn). Records that cannot be used
become dead letters (reason, position, original text) and are counted; they never stop the run.
An event without an ``id`` is named after its position in the file (line or row number). The
summary holds the counts, metrics, drifts, snapshots and rollbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Any

from connectors.files import read_events
from stream.config import Config
from stream.dead_letters import dead_letter
from stream.events import encode_record
from stream.prequential import Engine, LearnerSummary
from stream.snapshots import SnapshotStore
from stream.step import RecordStep

logger = logging.getLogger(__name__)
REJECTIONS_LOGGED = 10


def run_replay(
    records: Iterable[tuple[int, bytes | dict[str, Any]]],
    engine: Engine,
    predictions: IO[str] | None = None,
    dead_letters: IO[str] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> LearnerSummary:
    """Drive ``engine`` over ``(position, record)`` pairs; return the engine's summary."""
    step = RecordStep(engine.config)
    # Written once the event is learned, as the service publishes it.
    emit = None if predictions is None else lambda p: predictions.write(encode_record(p).decode() + "\n")
    max_bytes = engine.config.service.max_event_bytes

    def refuse(position: int, raw: bytes | dict[str, Any], reason: str) -> None:
        if engine.state.errors <= REJECTIONS_LOGGED:
            logger.warning("record %d rejected: %s", position, reason)
        if dead_letters is not None:
            record = dead_letter(reason, raw, {"position": position}, max_bytes)
            dead_letters.write(encode_record(record).decode() + "\n")

    for position, raw in records:
        reason = step(engine, raw, "", position, emit, (position, raw))
        if reason is not None:
            refuse(position, raw, reason)
        for (culprit_position, culprit_raw), why in engine.take_unlearned():
            refuse(culprit_position, culprit_raw, why)
        if reason is None and on_progress is not None:
            on_progress(position)
    return engine.summary()


def replay_file(
    input_path: Path | str,
    config: Config,
    output: Path | None = None,
    dead_letters: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> LearnerSummary:
    """Replay a JSONL/CSV file with ``config``; predictions and dead letters go to files if given."""
    engine = Engine(config, SnapshotStore.from_config(config.snapshots))
    with (
        open(output, "w") if output else nullcontext() as predictions_file,
        open(dead_letters, "w") if dead_letters else nullcontext() as dead_letter_file,
    ):
        return run_replay(read_events(input_path), engine, predictions_file, dead_letter_file, on_progress)
