"""Drifting streams with recurring concepts, as events in the public JSON format.

Concepts are River's ``synth.Agrawal`` classification functions (or ``synth.SEA`` variants);
the stream switches abruptly between them, e.g. A -> B -> A, so a model trained on A is worth
returning to. Seeds make every stream reproducible.

>>> events = list(recurring_concepts(segment_size=2, concepts=(0, 2)))
>>> len(events), events[0]["id"], sorted(events[0]["x"])[:3]
(4, 'e-1', ['age', 'car', 'commission'])
>>> [event["concept"] for event in events]
[0, 0, 2, 2]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from river.datasets import synth


def recurring_concepts(
    segment_size: int = 5000,
    concepts: tuple[int, ...] = (0, 2, 0),
    generator: Literal["agrawal", "sea"] = "agrawal",
    seed: int = 42,
) -> Iterator[dict[str, Any]]:
    """Events whose label follows ``concepts[i]`` for the i-th segment of ``segment_size`` events.

    Each event also carries ``concept`` (which the engine ignores: unknown fields are refused,
    so strip it before publishing; :func:`as_event` does).
    """
    number = 0
    for segment, concept in enumerate(concepts):
        if generator == "agrawal":
            stream = synth.Agrawal(classification_function=concept, seed=seed + segment)
        else:
            stream = synth.SEA(variant=concept, seed=seed + segment)
        for x, y in stream.take(segment_size):
            number += 1
            yield {"id": f"e-{number}", "x": dict(x), "y": bool(y), "concept": concept}


def as_event(record: dict[str, Any]) -> dict[str, Any]:
    """The public event (``id``, ``x``, ``y``) without the generator's bookkeeping."""
    return {"id": record["id"], "x": record["x"], "y": record["y"]}
