"""File sources: JSONL and CSV events, read lazily, each record with its position.

JSONL lines are returned as raw bytes (decoded and validated by :mod:`stream.events`, exactly as
Kafka messages are). CSV rows become event objects: the columns ``id``, ``key``, ``ts`` and
``y`` are the event's fields, every other column is a feature; numbers and ``true``/``false``
are converted, an empty cell is a missing value.

>>> import io
>>> rows = list(read_csv(io.StringIO("id,f1,color,y\\ne-1,0.5,red,true\\ne-2,2,,\\n")))
>>> rows[0]
(1, {'x': {'f1': 0.5, 'color': 'red'}, 'id': 'e-1', 'y': True})
>>> rows[1]
(2, {'x': {'f1': 2}, 'id': 'e-2'})
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

EVENT_COLUMNS = frozenset({"id", "key", "ts", "y"})


def _parse_cell(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def read_jsonl(handle: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) for each non-blank line."""
    for number, line in enumerate(handle, start=1):
        if line.strip():
            yield number, line.rstrip(b"\r\n")


def read_csv(handle: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, event object) for each row after the header."""
    for number, row in enumerate(csv.DictReader(handle), start=1):
        event: dict[str, Any] = {"x": {}}
        for column, cell in row.items():
            if cell is None or cell == "":
                continue
            value = _parse_cell(cell) if column != "id" else cell
            if column in EVENT_COLUMNS:
                event[column] = value if column in ("y", "ts") else str(value)
            else:
                event["x"][column] = value
        yield number, event


def read_events(path: Path | str) -> Iterator[tuple[int, bytes | dict[str, Any]]]:
    """Records from a ``.csv`` file, or JSONL from any other file; ``-`` reads JSONL from stdin."""
    if str(path) == "-":
        yield from read_jsonl(sys.stdin.buffer)
        return
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as handle:
            yield from read_csv(handle)
    else:
        with open(path, "rb") as handle:
            yield from read_jsonl(handle)
