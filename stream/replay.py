"""Replay: the engine over a file of events, without Kafka.

Each record is decoded and validated, predicted, written, then learned. Records that cannot be
used become dead letters (reason, position, original text) and are counted; they never stop the
run. The summary holds the counts, metrics, drifts, snapshots and rollbacks.
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
from stream.events import InvalidEvent, decode_event, encode_record, validate_event
from stream.prequential import Engine
from stream.snapshots import SnapshotStore

logger = logging.getLogger(__name__)


def run_replay(
    records: Iterable[tuple[int, bytes | dict[str, Any]]],
    engine: Engine,
    predictions: IO[str] | None = None,
    dead_letters: IO[str] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Drive ``engine`` over ``records``; return the engine's summary."""
    task = engine.task
    emit = None if predictions is None else lambda p: predictions.write(encode_record(p).decode() + "\n")
    for position, raw in records:
        try:
            event = decode_event(raw, task) if isinstance(raw, bytes) else validate_event(raw, task)
            if event.id is None:
                event.id = str(position)
            # Written before learning, as the service publishes it: a prediction that cannot be
            # written is the event's fault, and the model does not learn the event.
            engine.process(event, emit)
        except InvalidEvent as error:
            engine.record_error()
            if engine.state.errors <= 10:
                logger.warning("record %d rejected: %s", position, error)
            if dead_letters is not None:
                record = dead_letter(str(error), raw, {"position": position})
                dead_letters.write(encode_record(record).decode() + "\n")
            continue
        if on_progress is not None:
            on_progress(position)
    return engine.summary()


def replay_file(
    input_path: Path | str,
    config: Config,
    output: Path | None = None,
    dead_letters: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Replay a JSONL/CSV file with ``config``; predictions and dead letters go to files if given."""
    engine = Engine(config, SnapshotStore.from_config(config.snapshots))
    with (
        open(output, "w") if output else nullcontext() as predictions_file,
        open(dead_letters, "w") if dead_letters else nullcontext() as dead_letter_file,
    ):
        return run_replay(read_events(input_path), engine, predictions_file, dead_letter_file, on_progress)
