"""What a pickle costs the live model afterwards, and what stream.pickling wins back; same process.

    python -m benchmarks.unpickling [--events 20000] [--pairs 10]

On CPython 3.11 pickling an object materializes its attribute dict and slows its attribute reads
for good (stream/pickling.py). Two measurements, each in alternating pairs on the same events:

- **model**: a model trained on the first quarter of the events, then predicting and learning the
  rest; a copy made with :func:`pickle.loads` and one made with :func:`stream.pickling.loads`,
  each against the original (built by learning, never pickled).
- **engine**: ``Engine.process`` with a checkpoint every ``--checkpoint-every`` events, as the
  service runs it: going on after each snapshot with the copy unpickled from its pickle (what the
  engine does) against going on with the pickled original (what it did before).
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.engine import checkpointed_rate, concept_records
from benchmarks.models import FACTORIES, LABELS
from stream import pickling
from stream.config import Config
from stream.events import Event, validate_event
from stream.models import build_model
from stream.prequential import Engine
from stream.snapshots import SnapshotStore


def _model_rate(model: Any, events: list[Event]) -> float:
    started = time.perf_counter()
    for event in events:
        model.predict_proba_one(event.x)
        model.learn_one(event.x, event.y)
    return len(events) / (time.perf_counter() - started)


def _engine_rate(config: Config, events: list[Event], go_on_with_copy: bool, checkpoint_every: int) -> float:
    engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="bench-unpickling-")))
    if not go_on_with_copy:
        engine._go_on_from = lambda payload: None  # type: ignore[method-assign]
    return checkpointed_rate(engine, events, checkpoint_every)


def _pairs(runs: dict[str, Callable[[], float]], pairs: int) -> dict[str, list[float]]:
    """Rates of each run, ``pairs`` times, the order of the runs reversed every other time."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for pair in range(pairs):
        for name in list(runs) if pair % 2 == 0 else reversed(list(runs)):
            rates[name].append(runs[name]())
    return rates


def _ratio(rates: list[float], baseline: list[float]) -> str:
    ratios = [rate / base for rate, base in zip(rates, baseline, strict=True)]
    low, median, high = statistics.quantiles(ratios, n=4)
    return f"{median:6.3f} ({low:.3f}..{high:.3f})"


def _compare(name: str, events: list[Event], pairs: int, checkpoint_every: int) -> None:
    config = Config.model_validate({"model": {"factory": f"benchmarks.models:{FACTORIES[name]}"}})
    train, rest = events[: len(events) // 4], events[len(events) // 4 :]

    def trained() -> Any:
        model = build_model(config.model)
        for event in train:
            model.learn_one(event.x, event.y)
        return model

    payload = pickling.dumps(trained())
    # Each run learns on a model of its own, all alike at the start: one trained afresh, or a
    # copy unpickled from the trained model's pickle.
    model = _pairs(
        {
            "original": lambda: _model_rate(trained(), rest),
            "pickle.loads": lambda: _model_rate(pickle.loads(payload), rest),
            "stream.pickling.loads": lambda: _model_rate(pickling.loads(payload), rest),
        },
        pairs,
    )
    engine = _pairs(
        {
            "copy": lambda: _engine_rate(config, events, True, checkpoint_every),
            "original": lambda: _engine_rate(config, events, False, checkpoint_every),
        },
        pairs,
    )
    print(LABELS[name])
    print(f"  model: never pickled {statistics.median(model['original']):.0f} ev/s; a copy by "
          f"pickle.loads {_ratio(model['pickle.loads'], model['original'])}, by stream.pickling.loads "
          f"{_ratio(model['stream.pickling.loads'], model['original'])}")  # fmt: skip
    print(f"  engine: going on with the pickled original {statistics.median(engine['original']):.0f} "
          f"ev/s; with the copy {_ratio(engine['copy'], engine['original'])}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=10, help="alternating repetitions of each comparison")
    parser.add_argument("--checkpoint-every", type=int, default=2_500)
    parser.add_argument("--models", default="lr,ht")
    args = parser.parse_args()
    events = [validate_event(r, "binary") for r in concept_records(args.events)]
    print(f"{args.events} events, {args.pairs} pairs, checkpoint every {args.checkpoint_every}; "
          "medians of the pairs' ratios (quartiles)")  # fmt: skip
    for name in args.models.split(","):
        _compare(name, events, args.pairs, args.checkpoint_every)


if __name__ == "__main__":
    main()
