"""What a partition's snapshots weigh over a day of a stream that drifts often, with and without
bounded retention, measured on the same events in one process.

    python -m benchmarks.retention [--events 300000] [--segment 5000] [--rate 1000]

The stream switches concept every ``--segment`` events (at ``--rate`` events/s, 5,000 events is a
drift every 5 seconds: a noisy stream). A Hoeffding tree learns it with the default drift policy and
a checkpoint every 10,000 events, as the service takes them. Two stores, same events:

  unbounded  drift and manual snapshots kept until deleted (the store before snapshots.keep_concepts)
  bounded    the defaults: the last snapshots.keep_concepts (20) drift and manual snapshots, and
             snapshots.max_partition_bytes (1 GiB)

Printed: drifts, snapshots and MB kept at the end, and what a partition keeps after a day at
``--rate``: unbounded, the end plus the growth of the run's second half carried on for the rest of
the day; bounded, at most as many snapshots as it keeps now, each at most the size of the newest
one, and never more than the byte budget.
"""

from __future__ import annotations

import argparse
import tempfile

from stream.config import Config
from stream.datasets import as_event, recurring_concepts
from stream.events import validate_event
from stream.prequential import Engine
from stream.snapshots import SnapshotStore

CHECKPOINT_EVERY = 10_000


def _stored_bytes(store: SnapshotStore) -> int:
    return sum(manifest.size_bytes for manifest in store.list())


def _run(config: Config, events: list, store: SnapshotStore) -> tuple[int, int, int, int, int]:
    """(drifts, snapshots kept, bytes kept, bytes kept at half time, size of the newest snapshot)."""
    engine = Engine(config, store)
    half = 0
    for n, event in enumerate(events, 1):
        engine.process(event)
        if n % CHECKPOINT_EVERY == 0:
            engine.checkpoint("checkpoint")
        if n == len(events) // 2:
            half = _stored_bytes(store)
    kept = store.list()
    return engine.state.drifts, len(kept), _stored_bytes(store), half, kept[-1].size_bytes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--segment", type=int, default=5_000, help="events per concept")
    parser.add_argument("--rate", type=int, default=1_000, help="events/s, for the projection to a day")
    args = parser.parse_args()
    concepts = tuple((0, 2, 4, 6)[n % 4] for n in range(args.events // args.segment + 1))
    records = recurring_concepts(args.segment, concepts)
    events = [
        validate_event(as_event(r), "binary") for r, _ in zip(records, range(args.events), strict=False)
    ]
    config = Config.model_validate({"model": {"pipeline": ["tree.HoeffdingTreeClassifier"]}})
    defaults = config.snapshots
    stores = {
        "unbounded": lambda directory: SnapshotStore(directory, defaults.keep_last, keep_concepts=None),
        "bounded": lambda directory: SnapshotStore(
            directory, defaults.keep_last, None, defaults.keep_concepts, defaults.max_partition_bytes
        ),
    }
    per_day = 86_400 * args.rate
    print(
        f"{args.events} events, a new concept every {args.segment}, checkpoint every {CHECKPOINT_EVERY}; "
        f"a day at {args.rate} events/s = {per_day:,} events"
    )
    print(f"{'store':10} {'drifts':>7} {'kept':>5} {'MB kept':>8} {'MB after a day':>15} {'ratio':>6}")
    after_a_day: dict[str, float] = {}
    for name, build in stores.items():
        drifts, kept, stored, half, newest = _run(
            config, events, build(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        )
        if name == "unbounded":
            growth_per_event = max(0, stored - half) / (args.events - args.events // 2)
            after_a_day[name] = (stored + growth_per_event * (per_day - args.events)) / 1e6
        else:
            after_a_day[name] = min(kept * newest, defaults.max_partition_bytes) / 1e6
        ratio = after_a_day[name] / after_a_day["unbounded"]
        print(f"{name:10} {drifts:7d} {kept:5d} {stored / 1e6:8.2f} {after_a_day[name]:15.1f} {ratio:6.3f}")


if __name__ == "__main__":
    main()
