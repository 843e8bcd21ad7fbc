"""What the engine costs per event, against the bare River loop, in one process.

    python -m benchmarks.engine [--events 50000] [--repeats 3]

For each model the same pre-generated events go through:
  bare         predict_proba_one, metric.update, learn_one (the limit);
  engine       Engine.process on decoded events, drift detector running, policy "none"
               (prediction record, cumulative + rolling metrics, detector): the loop's own cost;
  engine+best  the same with policy "best": adds what the policy does at each drift (snapshots,
               scoring candidates, training the fresh one), and its rollbacks change the model;
  replay       engine (policy "none") from JSON bytes: decode + validate and JSON-encode the output.
And the decoder alone: the hot-loop decode_event against the pydantic EventModel.
Figures are medians of --repeats runs; ratios are events/s relative to bare.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial

import river
from river import metrics

from benchmarks.models import FACTORIES, LABELS
from stream.config import Config
from stream.datasets import as_event, recurring_concepts
from stream.events import Event, EventModel, decode_event, encode_record, validate_event
from stream.models import build_model
from stream.prequential import Engine
from stream.snapshots import SnapshotStore

BENCHMARKED = ("lr", "ht")


def concept_records(count: int) -> list[dict]:
    """``count`` Agrawal events of concepts A, B, A (fixed seed), as records of the JSON contract."""
    return [as_event(r) for r in recurring_concepts(count // 3 + 1, (0, 2, 0))][:count]


def checkpointed_rate(engine: Engine, events: list[Event], checkpoint_every: int) -> float:
    """Events/s of ``engine.process`` over ``events``, with a checkpoint every ``checkpoint_every``
    events, as the service takes them."""
    started = time.perf_counter()
    for n, event in enumerate(events, 1):
        engine.process(event)
        if n % checkpoint_every == 0:
            engine.checkpoint("checkpoint")
    return len(events) / (time.perf_counter() - started)


def events_per_second(run: Callable[[], int], repeats: int) -> float:
    """The median rate of ``run``, which returns how many events it handled, over ``repeats``."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        count = run()
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates)


def _bare(config: Config, pairs: list) -> int:
    model, metric = build_model(config.model), metrics.Accuracy()
    for x, y in pairs:
        proba = model.predict_proba_one(x)
        y_pred = max(proba, key=proba.get) if proba else None
        if y_pred is not None:
            metric.update(y, y_pred)
        model.learn_one(x, y)
    return len(pairs)


def _engine(config: Config, events: list) -> int:
    engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="bench-")))
    for event in events:
        engine.process(event)
    return len(events)


def _replay(config: Config, lines: list[bytes]) -> int:
    engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="bench-")))
    for line in lines:
        encode_record(engine.process(decode_event(line, "binary")))
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    records = concept_records(args.events)
    raw = [json.dumps(r).encode() for r in records]
    decoded = [validate_event(r, "binary") for r in records]
    pairs = [(r["x"], r["y"]) for r in records]
    versions = f"River {river.__version__}, Python {platform.python_version()}"
    print(f"{args.events} Agrawal events (A, B, A); {versions}")
    print(f"{'model':36} {'path':12} {'events/s':>10} {'ratio':>7} {'us/event overhead':>18}")
    for model in BENCHMARKED:
        name = LABELS[model]
        factory = f"benchmarks.models:{FACTORIES[model]}"
        configs = {
            policy: Config.model_validate({"model": {"factory": factory}, "drift": {"policy": policy}})
            for policy in ("none", "best")
        }
        base = events_per_second(partial(_bare, configs["none"], pairs), args.repeats)
        paths = {
            "engine": partial(_engine, configs["none"], decoded),
            "engine+best": partial(_engine, configs["best"], decoded),
            "replay": partial(_replay, configs["none"], raw),
        }
        print(f"{name:36} {'bare':12} {base:10.0f} {1:7.2f} {0:18.1f}")
        for path, run in paths.items():
            rate = events_per_second(run, args.repeats)
            print(f"{name:36} {path:12} {rate:10.0f} {rate / base:7.2f} {(1 / rate - 1 / base) * 1e6:18.1f}")

    fast = events_per_second(lambda: sum(1 for line in raw if decode_event(line, "binary")), args.repeats)
    slow = events_per_second(
        lambda: sum(1 for line in raw if EventModel.model_validate_json(line).to_event("binary")),
        args.repeats,
    )
    print(f"decode_event {fast:.0f}/s; pydantic EventModel {slow:.0f}/s; fast/pydantic = {fast / slow:.2f}x")


if __name__ == "__main__":
    main()
