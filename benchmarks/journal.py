"""What the undo journal costs the loop: Engine.process with it and without it, same process.

    python -m benchmarks.journal [--events 10000] [--runs 12]

The journal (stream/journal.py) makes learning all or nothing and lets a broken model heal. Its
cost is measured here against the same engine with the journal replaced by one that keeps
nothing: runs alternate (with, without, with, ...) on the same pre-generated events, each on a
fresh engine, and the medians are compared. A checkpoint every ``--checkpoint-every`` events, as
the service takes them, is included in both (its pickle is the journal's good state).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from typing import Any

from benchmarks.engine import checkpointed_rate, concept_records
from benchmarks.models import FACTORIES, LABELS
from stream.config import Config
from stream.events import Event, validate_event
from stream.journal import Journal
from stream.prequential import Engine
from stream.snapshots import SnapshotStore


class NoJournal(Journal):
    """Keeps nothing: the engine as it was before learning was made all or nothing."""

    def due(self) -> bool:
        return False

    def start(self, base: Any, answered: Any) -> None:
        pass

    def record(self, *entry: Any, **kwargs: Any) -> None:
        pass


def _run(config: Config, events: list[Event], journal: bool, checkpoint_every: int) -> float:
    engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="bench-journal-")))
    if not journal:
        engine._journal = NoJournal()
    return checkpointed_rate(engine, events, checkpoint_every)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=40, help="pairs of runs (with, without)")
    parser.add_argument("--checkpoint-every", type=int, default=2500)
    parser.add_argument("--models", default="lr,ht")
    args = parser.parse_args()
    events = [validate_event(r, "binary") for r in concept_records(args.events)]
    print(f"{args.events} events per run, {args.pairs} pairs, checkpoint every {args.checkpoint_every}")
    print(f"{'model':36} {'without ev/s':>13} {'with ev/s':>10} {'with/without':>13} {'quartiles':>13}")
    for model in args.models.split(","):
        config = Config.model_validate({"model": {"factory": f"benchmarks.models:{FACTORIES[model]}"}})
        ratios, with_rates, without_rates = [], [], []
        for pair in range(args.pairs):
            order = (True, False) if pair % 2 == 0 else (False, True)
            rates = {journal: _run(config, events, journal, args.checkpoint_every) for journal in order}
            ratios.append(rates[True] / rates[False])
            with_rates.append(rates[True])
            without_rates.append(rates[False])
        low, median, high = statistics.quantiles(ratios, n=4)
        without, with_ = statistics.median(without_rates), statistics.median(with_rates)
        print(f"{LABELS[model]:36} {without:13.0f} {with_:10.0f} {median:13.3f} {low:6.3f}..{high:.3f}")


if __name__ == "__main__":
    main()
