"""What the garbage collector costs the service's loop, and what ``gc.freeze`` at start wins back.

    python -m benchmarks.collector [--events 100000] [--pairs 4] [--models lr,ht]

``stream serve`` freezes what the process holds before the service starts (modules, classes,
configuration): CPython's full collections then no longer scan it. This measures it in one
process holding what the service holds (its modules imported, the events only as bytes, which the
collector does not track): decode, ``Engine.process``, encode, a checkpoint every
``--checkpoint-every`` events, in alternating pairs, once as it ran before (nothing frozen) and
once frozen first (``gc.freeze()``, undone after). Prints events/s, the seconds
spent in collections of each generation (``gc.callbacks``), and the ratio of the frozen run's
rate to the other's, medians of the pairs.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from typing import Any

import connectors.confluent  # noqa: F401  (what ``stream serve`` holds: its modules)
import stream.api
import stream.cli
import stream.service  # noqa: F401
from benchmarks.engine import concept_records
from benchmarks.models import FACTORIES, LABELS
from stream.config import Config
from stream.events import decode_event, encode_record
from stream.prequential import Engine
from stream.snapshots import SnapshotStore


class CollectionTimer:
    """Seconds spent in the collector's collections, per generation, while installed."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._started
            self.counts[info["generation"]] += 1


def _run(
    config: Config, lines: list[bytes], checkpoint_every: int, frozen: bool
) -> tuple[float, CollectionTimer]:
    """Events/s of the loop over ``lines`` and the time collections took, frozen first or not."""
    if frozen:
        gc.freeze()  # as ``stream serve`` does (the previous run ended with a full collection)
    timer = CollectionTimer()
    gc.callbacks.append(timer)
    try:
        engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="bench-collector-")))
        started = time.perf_counter()
        for n, line in enumerate(lines, 1):
            encode_record(engine.process(decode_event(line, "binary")))
            if n % checkpoint_every == 0:
                engine.checkpoint("checkpoint")
        rate = len(lines) / (time.perf_counter() - started)
    finally:
        gc.callbacks.remove(timer)
        gc.unfreeze()
    del engine
    gc.collect()  # the next run starts from the same heap
    return rate, timer


def _compare(name: str, lines: list[bytes], pairs: int, checkpoint_every: int) -> None:
    config = Config.model_validate(
        {"model": {"factory": f"benchmarks.models:{FACTORIES[name]}"}, "drift": {"policy": "none"}}
    )
    runs: dict[bool, list[tuple[float, CollectionTimer]]] = {False: [], True: []}
    for pair in range(pairs):
        for frozen in (False, True) if pair % 2 == 0 else (True, False):
            runs[frozen].append(_run(config, lines, checkpoint_every, frozen))
    print(LABELS[name])
    for frozen, label in ((False, "nothing frozen"), (True, "frozen at start")):
        rates = [rate for rate, _ in runs[frozen]]
        seconds = [statistics.median(timer.seconds[g] for _, timer in runs[frozen]) for g in range(3)]
        counts = [statistics.median(timer.counts[g] for _, timer in runs[frozen]) for g in range(3)]
        print(f"  {label:16} {statistics.median(rates):8.0f} ev/s; in collections: "
              + ", ".join(f"gen{g} {counts[g]:.0f} x {seconds[g]:.3f} s" for g in range(3)))  # fmt: skip
    ratios = [f[0] / n[0] for f, n in zip(runs[True], runs[False], strict=True)]
    print(f"  frozen / nothing frozen: {statistics.median(ratios):.3f} (pairs: "
          + ", ".join(f"{r:.3f}" for r in ratios) + ")")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=4, help="alternating repetitions of the comparison")
    parser.add_argument("--checkpoint-every", type=int, default=10_000, help="the service's default")
    parser.add_argument("--models", default="lr,ht")
    args = parser.parse_args()
    lines = [json.dumps(record).encode() for record in concept_records(args.events)]
    gc.collect()
    print(f"{args.events} events, {args.pairs} pairs, checkpoint every {args.checkpoint_every}; "
          f"{len(gc.get_objects())} objects tracked before the first run")  # fmt: skip
    for name in args.models.split(","):
        _compare(name, lines, args.pairs, args.checkpoint_every)


if __name__ == "__main__":
    main()
