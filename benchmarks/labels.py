"""What delayed labels cost: the join with many events waiting, and a checkpoint beside it.

    python -m benchmarks.labels [--pending 1000000] [--labels 200000]

In one process, on the same pre-generated events (Agrawal features, the linear pipeline):

1. ``--pending`` events are predicted and left waiting (the join's memory: RSS before and after);
2. a checkpoint of the partition's engine, timed with those events waiting and with none: the
   join is not in the snapshot (its changes go to a changelog topic), so the two should match;
3. ``--labels`` labels come for waiting events: learning them, against learning the same events
   with their labels inline (the baseline: what a service without delayed labels does);
   (the join's changes encoded for the changelog every 20,000 labels, as a commit does, included);
4. those commits timed alone: what keeping the join durable costs a label.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import tempfile
import time
from collections.abc import Callable

from stream.changelog import encode_example, encode_join_entry
from stream.config import Config
from stream.datasets import as_event, recurring_concepts
from stream.events import Event
from stream.join import Join
from stream.prequential import Engine
from stream.snapshots import SnapshotStore

LABELS_PER_COMMIT = 20_000  # at 100,000 labels a second, a commit every 0.2 s (the default)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(run: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, default=200_000, help=f"at least {LABELS_PER_COMMIT}")
    args = parser.parse_args()
    config = Config.model_validate({"drift": {"policy": "none"}, "labels": {"max_pending": args.pending + 1}})
    records = [as_event(r) for r in recurring_concepts(args.pending // 3 + 1, (0, 1, 0))][: args.pending]
    events = [Event(x=r["x"], y=r["y"], id=str(n)) for n, r in enumerate(records)]
    print(f"{args.pending} events waiting, {args.labels} labels; the linear pipeline")

    engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="bench-labels-")))
    empty_checkpoint = _timed(lambda: engine.checkpoint("checkpoint"))
    join = Join(config.labels, track_changes=True)
    gc.collect()
    before = _rss_mb()
    started = time.perf_counter()
    for event in events:
        join.event_came(event.id, 0.0)
        join.wait(event.id, event.x, engine.answer(event), 0.0)
    waiting_seconds = time.perf_counter() - started
    gc.collect()
    after = _rss_mb()
    join.take_changes()
    print(
        f"  waiting: {join.waiting} events; RSS {before:.0f} -> {after:.0f} MB "
        f"({(after - before) * 1024 * 1024 / max(1, join.waiting):.0f} bytes an event); "
        f"predicted and kept at {len(events) / waiting_seconds:.0f} events/s"
    )
    full_checkpoint = _timed(lambda: engine.checkpoint("checkpoint"))
    print(
        f"  checkpoint: {full_checkpoint * 1000:.1f} ms with them waiting, {empty_checkpoint * 1000:.1f} ms "
        f"with none (ratio {full_checkpoint / empty_checkpoint:.2f})"
    )

    labelled = events[: args.labels]
    commit_seconds: list[float] = []
    started = time.perf_counter()
    for n, event in enumerate(labelled, 1):
        waiting = join.label_came(event.id, event.y, 1.0)
        assert waiting is not None
        encode_example(n, event, waiting.prediction)
        engine.learn_joined(event, waiting.prediction)
        join.joined(event.id, 1.0, 0.0, 1.0)
        if n % LABELS_PER_COMMIT == 0:  # a commit: the join's changes encoded for its changelog
            commit_started = time.perf_counter()
            for key, entry in join.take_changes():
                encode_join_entry(key, entry)
            commit_seconds.append(time.perf_counter() - commit_started)
    joined_rate = len(labelled) / (time.perf_counter() - started)
    baseline_engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="bench-labels-")))
    started = time.perf_counter()
    for event in labelled:
        baseline_engine.process(event)
    inline_rate = len(labelled) / (time.perf_counter() - started)
    print(
        f"  labels joined and learned, examples and join changes encoded: {joined_rate:.0f}/s; the same"
        f" events learned with their labels inline: {inline_rate:.0f}/s"
        f" (ratio {joined_rate / inline_rate:.2f})"
    )
    commit = statistics.median(commit_seconds)
    print(
        f"  the join's changes of {LABELS_PER_COMMIT} labels (two keys each) encoded at a commit: "
        f"{commit * 1000:.1f} ms, {commit / LABELS_PER_COMMIT * 1e6:.1f} us a label"
    )


if __name__ == "__main__":
    main()
