"""What a checkpoint costs as the model grows, against the way it was taken before, in one process.

    python -m benchmarks.checkpoint [--events 200000] [--every 10000] [--repeats 5] [--models ht,lr]

One engine learns the events (policy ``none``) and, every ``--every`` events, is timed taking a
checkpoint ``--repeats`` times in alternating order, each after one more event learned (the last
one again: a checkpoint with nothing learned since the last has no trial update to make), two ways:

  checkpoint     ``Engine.checkpoint`` as it is: the state pickled and unpickled once, the trial
                 update (does the model survive learning the last event again?) made on the state
                 left behind
  with a copy    the same checkpoint after the trial update on a deep copy of the model, which is
                 what each checkpoint did before (``copy.deepcopy`` of the whole model)

Prints milliseconds per checkpoint (medians) at each point, and their ratio; the snapshot's size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable

from benchmarks.engine import concept_records
from benchmarks.models import FACTORIES, LABELS
from stream.config import Config
from stream.events import decode_event
from stream.prequential import Engine
from stream.snapshots import SnapshotStore


def _milliseconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) * 1000


def _measure(name: str, lines: list[bytes], every: int, repeats: int) -> None:
    config = Config.model_validate({
        "model": {"factory": f"benchmarks.models:{FACTORIES[name]}"}, "drift": {"policy": "none"},
        "snapshots": {"keep_last": 2},
    })  # fmt: skip
    engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="bench-checkpoint-")))

    def as_before() -> None:
        engine._survives_an_update()  # the deep copy's trial, as each checkpoint made it
        engine.checkpoint("checkpoint")

    print(LABELS[name])
    print(f"  {'events':>8} {'checkpoint ms':>14} {'with a copy ms':>15} {'ratio':>6} {'snapshot':>10}")
    for n, line in enumerate(lines, 1):
        engine.process(decode_event(line, "binary"))
        if n % every:
            continue
        now: list[float] = []
        before: list[float] = []
        for repeat in range(repeats):
            pair = ((now, lambda: engine.checkpoint("checkpoint")), (before, as_before))
            for times, run in pair if repeat % 2 == 0 else reversed(pair):
                # An event learned since the last checkpoint, or there is no trial to make.
                engine.process(decode_event(line, "binary"))
                times.append(_milliseconds(run))
        now_ms, before_ms = statistics.median(now), statistics.median(before)
        size_mb = engine.last_snapshot_bytes / 1e6
        print(f"  {n:8d} {now_ms:14.1f} {before_ms:15.1f} {now_ms / before_ms:6.2f} {size_mb:8.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--every", type=int, default=10_000, help="the service's checkpoint_every_events")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="ht,lr")
    args = parser.parse_args()
    lines = [json.dumps(record).encode() for record in concept_records(args.events)]
    for name in args.models.split(","):
        _measure(name, lines, args.every, args.repeats)


if __name__ == "__main__":
    main()
