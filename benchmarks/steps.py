"""What each step of the engine's loop costs per event, measured one step at a time.

    python -m benchmarks.steps [--events 30000] [--repeats 5]

One engine (policy ``none``, as the service benchmark runs it) processes the events once; what each
step was given is kept, then each step runs again alone over the same inputs and is timed:

  decode        ``decode_event``: JSON bytes to a validated event
  predict       the model's own ``predict_proba_one``
  record        ``Engine.predict`` less the model's call: the prediction record around it
  learn         the model's own ``learn_one``
  metrics       the cumulative and rolling metrics (``MetricTracker.update``)
  drift         the loss and the drift detector (``loss_of`` + ``DriftMonitor.update``)
  journal       the undo journal's entry (``Journal.record``)
  encode        ``encode_record``: the prediction to JSON bytes
  latency       the latency histogram (``Histogram.observe``)

and the whole ``Engine.process`` (decoded event in, record out) beside the bare model (predict +
learn). Microseconds per event, medians of ``--repeats``; each step's share of the engine's own
cost (everything but the model).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from collections.abc import Callable

from benchmarks.engine import concept_records, events_per_second
from benchmarks.models import FACTORIES, LABELS
from stream.config import Config
from stream.drift import loss_of
from stream.events import decode_event, encode_record
from stream.journal import Journal
from stream.prequential import Engine
from stream.snapshots import SnapshotStore
from stream.telemetry import LATENCY_BUCKETS, Histogram

STEPS = ("decode", "predict", "record", "learn", "metrics", "drift", "journal", "encode", "latency")
MODEL_STEPS = ("predict", "learn")


def _microseconds(run: Callable[[], object], count: int, repeats: int) -> float:
    """Median microseconds per item of ``run``, which handles ``count`` items."""

    def counted() -> int:
        run()
        return count

    return 1e6 / events_per_second(counted, repeats)


def measure(factory: str, lines: list[bytes], repeats: int) -> dict[str, float]:
    """Microseconds per event of each step, for the model ``factory`` makes."""
    config = Config.model_validate({"model": {"factory": factory}, "drift": {"policy": "none"}})
    events = [decode_event(line, "binary") for line in lines]
    engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="bench-")))
    model_before = copy.deepcopy(engine.state.model)
    metrics_before = copy.deepcopy(engine.state.metrics)
    monitor_before = copy.deepcopy(engine.state.monitor)
    records = [engine.process(event) for event in events]  # the engine does not change an event
    trained = engine.state.model
    count = len(events)

    def whole() -> None:
        run = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="bench-")))
        for event in events:
            run.process(event)

    def bare() -> None:
        model = copy.deepcopy(model_before)
        for event in events:
            model.predict_proba_one(event.x)
            model.learn_one(event.x, event.y)

    def learn() -> None:
        model = copy.deepcopy(model_before)
        for event in events:
            model.learn_one(event.x, event.y)

    def predict() -> None:
        for event in events:
            trained.predict_proba_one(event.x)

    def record() -> None:
        for event in events:
            engine.predict(event)

    def metrics() -> None:
        tracker = copy.deepcopy(metrics_before)
        for event, out in zip(events, records, strict=True):
            tracker.update(event.y, out["y_pred"], out.get("y_proba"))

    def drift() -> None:
        monitor = copy.deepcopy(monitor_before)
        for event, out in zip(events, records, strict=True):
            monitor.update(event.x, event.y, loss_of("binary", event.y, out["y_pred"]))

    def journal() -> None:
        kept = Journal()
        kept.start(b"", None)
        for event in events:
            if kept.due():
                kept.start(b"", None)
            kept.record(event.x, event.y, event.id, None, 100)

    histogram = Histogram("bench_latency_seconds", "latency", LATENCY_BUCKETS)
    result = {
        "decode": _microseconds(lambda: [decode_event(line, "binary") for line in lines], count, repeats),
        "predict": _microseconds(predict, count, repeats),
        "record": _microseconds(record, count, repeats),
        "learn": _microseconds(learn, count, repeats),
        "metrics": _microseconds(metrics, count, repeats),
        "drift": _microseconds(drift, count, repeats),
        "journal": _microseconds(journal, count, repeats),
        "encode": _microseconds(lambda: [encode_record(r) for r in records], count, repeats),
        "latency": _microseconds(lambda: [histogram.observe(0.004) for _ in records], count, repeats),
        "bare model": _microseconds(bare, count, repeats),
        "Engine.process": _microseconds(whole, count, repeats),
    }
    result["record"] -= result["predict"]  # Engine.predict calls the model: keep only its own part
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    records = concept_records(args.events)
    lines = [json.dumps(r).encode() for r in records]
    for model in ("lr", "ht"):
        steps = measure(f"benchmarks.models:{FACTORIES[model]}", lines, args.repeats)
        model_cost = sum(steps[step] for step in MODEL_STEPS)
        own = sum(steps[step] for step in STEPS if step not in MODEL_STEPS)
        print(f"\n{LABELS[model]} ({args.events} events), microseconds per event:")
        for step, value in steps.items():
            share = f"{value / own:6.1%}" if step in STEPS and step not in MODEL_STEPS else ""
            print(f"  {step:16} {value:8.2f}  {share}")
        print(f"  engine's own steps {own:.2f} us against the model's {model_cost:.2f} us")


if __name__ == "__main__":
    main()
