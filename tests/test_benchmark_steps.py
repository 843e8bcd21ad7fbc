"""The per-step cost benchmark runs and reports every step of the engine's loop."""

from __future__ import annotations

import json

import pytest

from benchmarks.models import FACTORIES
from benchmarks.steps import STEPS, measure
from stream.datasets import as_event, recurring_concepts

pytestmark = pytest.mark.benchmark


def test_the_step_benchmark_times_every_step_of_the_loop_and_the_whole():
    records = [as_event(r) for r in recurring_concepts(100, (0, 2, 0))][:300]
    lines = [json.dumps(r).encode() for r in records]
    # Medians of 3: one pause in one run is not the step's cost.
    figures = measure(f"benchmarks.models:{FACTORIES['lr']}", lines, repeats=3)
    assert list(figures) == [*STEPS, "bare model", "Engine.process"]
    assert all(figures[step] > 0 for step in ("decode", "predict", "learn", "metrics", "drift", "encode"))
    assert figures["Engine.process"] > figures["metrics"] + figures["drift"]
