"""What the snapshot store costs as snapshots accumulate, against a small store, in one process.

    python -m benchmarks.store [--snapshots 20000] [--baseline 100] [--repeats 5]

Each store holds ``keep_last`` checkpoints and drift snapshots for the rest: drift snapshots are
never rotated, so they are what accumulates. On each store:
  list (cold)              the first listing of a new SnapshotStore (the CLI, a restore)
  list                     a listing by a store that has listed before
  list(reason=checkpoint)  the checkpoints only (what retention reads)
  save checkpoint          a checkpoint save with its sequence, as the engine saves: payload,
                           manifest, fsyncs, rename and retention
  next_sequence            what a new engine asks the store for
Figures are medians of --repeats runs, in ms; ratio = the large store's time over the baseline's.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from stream.snapshots import MANIFEST, PAYLOAD, SnapshotStore

KEEP_LAST = 10


def _store(directory: Path, snapshots: int) -> SnapshotStore:
    """A store of ``snapshots`` snapshots, written directly: saving each would take minutes of fsyncs."""
    store = SnapshotStore(directory, keep_last=KEEP_LAST)
    template = store.save({"weights": [0.0] * 100}, reason="drift", offsets={"events:0": 0})
    payload = (directory / template.id / PAYLOAD).read_bytes()
    for sequence in range(2, snapshots + 1):
        reason = "checkpoint" if sequence > snapshots - KEEP_LAST else "drift"
        snapshot_id = f"{sequence:08d}-{reason}"
        manifest = template.model_copy(
            update={
                "id": snapshot_id,
                "sequence": sequence,
                "reason": reason,
                "offsets": {"events:0": sequence},
            }
        )
        (directory / snapshot_id).mkdir()
        (directory / snapshot_id / PAYLOAD).write_bytes(payload)
        (directory / snapshot_id / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return store


def _milliseconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(directory: Path, snapshots: int, repeats: int) -> dict[str, float]:
    store = _store(directory, snapshots)
    figures = {"list (cold)": _milliseconds(lambda: SnapshotStore(directory, KEEP_LAST).list(), repeats)}
    store.list()
    figures["list"] = _milliseconds(store.list, repeats)
    figures["list(reason=checkpoint)"] = _milliseconds(lambda: store.list(reason="checkpoint"), repeats)
    sequences = iter(range(snapshots + 1, snapshots + repeats + 1))
    figures["save checkpoint"] = _milliseconds(
        lambda: store.save({"weights": [1.0] * 100}, reason="checkpoint", sequence=next(sequences)), repeats
    )
    figures["next_sequence"] = _milliseconds(store.next_sequence, repeats)
    assert len(store.list(reason="checkpoint")) == KEEP_LAST and len(store.list()) == snapshots
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--snapshots", type=int, default=20_000)
    parser.add_argument("--baseline", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bench-") as small,
        tempfile.TemporaryDirectory(prefix="bench-") as large,
    ):
        base = measure(Path(small), args.baseline, args.repeats)
        grown = measure(Path(large), args.snapshots, args.repeats)
    print(f"snapshot store, {KEEP_LAST} checkpoints + drift snapshots; Python {platform.python_version()}")
    print(f"{'operation':26} {f'{args.baseline} (ms)':>12} {f'{args.snapshots} (ms)':>14} {'ratio':>8}")
    for operation, small_ms in base.items():
        large_ms = grown[operation]
        print(f"{operation:26} {small_ms:12.2f} {large_ms:14.2f} {large_ms / small_ms:8.1f}")


if __name__ == "__main__":
    main()
