"""The mutation score of ``make mutate``, module by module; fails below :data:`REQUIRED`.

Run after ``mutmut run`` (``make mutate`` does both). A mutant counts as caught when a test
failed or it ran out of time (an endless loop is a caught bug). The survivors judged equivalent
(no test can tell them from the original: the behaviour is the same) are listed in
:data:`EQUIVALENT` with the reason, and leave the denominator; every other survivor is printed so
it can be killed with a test or, after a look, added there.

    python -m tests.mutation_score
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

REQUIRED = 0.90
CAUGHT = {"killed", "timeout"}

# mutant name -> why it behaves exactly as the original code does.
EQUIVALENT: dict[str, str] = {
    "stream.publish.xǁPublisherǁ__init____mutmut_9": (
        "-2 instead of -1: any negative produce time means unknown"
    ),
    "stream.publish.xǁPublisherǁprediction__mutmut_9": (
        "> 0 instead of >= 0: differs only for a produce time of exactly the epoch"
    ),
    "stream.publish.xǁPublisherǁprediction__mutmut_10": (
        ">= 1 instead of >= 0: differs only for a produce time in the epoch's first millisecond"
    ),
    "stream.publish.xǁPublisherǁdead_letter__mutmut_33": ("codec name 'UTF-8' for 'utf-8': the same codec"),
    "stream.events.x_encode_record__mutmut_7": ("allow_nan=None for False: both falsy"),
    "stream.events.x_decode_event__mutmut_2": (
        "orjson.loads(None) fails, and the json fallback parses the same document to the same "
        "value: only slower (benchmarks/engine.py measures the decoder)"
    ),
    "stream.checkpoint.xǁCheckpointerǁ_restore__mutmut_8": (
        "'XXXX' for '' as the id of no checkpoint: no snapshot has either name"
    ),
    "stream.checkpoint.xǁCheckpointerǁ_restore__mutmut_55": (
        "the same, for a partition restored from nothing"
    ),
    "stream.checkpoint.xǁCheckpointerǁ_restore__mutmut_66": (
        "re-learned events are never published, so the prefix that names id-less ones is never seen"
    ),
    "stream.checkpoint.xǁCheckpointerǁ_restore__mutmut_67": ("the same, for the position part of the name"),
    "stream.checkpoint.xǁCheckpointerǁtick__mutmut_8": (
        "> for >= on a float clock: equal readings do not occur"
    ),
    "stream.checkpoint.xǁCheckpointerǁtick__mutmut_14": ("the same, for the commit interval"),
    "stream.checkpoint.xǁCheckpointerǁcommit__mutmut_9": ("uncommitted = None for False: both falsy"),
}


def results() -> dict[str, str]:
    """Every mutant's status, from ``mutmut results --all true``."""
    mutmut = Path(sys.executable).with_name("mutmut")
    listing = subprocess.run(
        [str(mutmut), "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"^\s*(\S+__mutmut_\d+): (.+?)\s*$", listing, re.MULTILINE))


def module_of(mutant: str) -> str:
    return mutant.split(".x")[0]


def main() -> int:
    statuses = results()
    if not statuses:
        print("no mutants: run `mutmut run` first")
        return 1
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[str] = []
    for mutant, status in sorted(statuses.items()):
        counts = by_module[module_of(mutant)]
        if mutant in EQUIVALENT:
            counts["equivalent"] += 1
        elif status in CAUGHT:
            counts["caught"] += 1
        else:
            counts["survived"] += 1
            survivors.append(f"{mutant}: {status}")
    print(f"{'module':<24} {'mutants':>8} {'caught':>7} {'equivalent':>10} {'survived':>8} {'score':>7}")
    failing = []
    total: Counter[str] = Counter()
    for module, counts in sorted(by_module.items()):
        total.update(counts)
        score = _score(counts)
        mutants = sum(counts.values())
        print(
            f"{module:<24} {mutants:>8} {counts['caught']:>7} {counts['equivalent']:>10} "
            f"{counts['survived']:>8} {score:>7.1%}"
        )
        if score < REQUIRED:
            failing.append(module)
    print(f"{'all':<24} {sum(total.values()):>8} {total['caught']:>7} {total['equivalent']:>10} "
          f"{total['survived']:>8} {_score(total):>7.1%}")  # fmt: skip
    if survivors:
        print("\nsurvivors (`mutmut show NAME` shows the change):")
        print("\n".join(f"  {line}" for line in survivors))
    stale = sorted(set(EQUIVALENT) - set(statuses))
    if stale:
        print(f"\nequivalent mutants that no longer exist (the code changed): {', '.join(stale)}")
    if failing:
        print(f"\nbelow {REQUIRED:.0%}: {', '.join(failing)}")
        return 1
    return 0


def _score(counts: Counter[str]) -> float:
    judged = counts["caught"] + counts["survived"]
    return counts["caught"] / judged if judged else 1.0


if __name__ == "__main__":
    sys.exit(main())
