"""Models that learn slowly, for restores that take longer than a group allows between polls,
and one that stops on cue, for a test that pauses a process at a chosen point.

Used as ``model.factory: "tests.slow_models:slow_tree"``; picklable, since snapshots pickle it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from river import tree

LEARN_SECONDS = 0.004


class SlowTree(tree.HoeffdingTreeClassifier):
    """A Hoeffding tree that takes :data:`LEARN_SECONDS` longer to learn each event."""

    def learn_one(self, x: dict, y: Any, **kwargs: Any) -> None:
        time.sleep(LEARN_SECONDS)
        super().learn_one(x, y, **kwargs)


def slow_tree() -> SlowTree:
    return SlowTree()


# Where a pausing tree waits (set only in the environment of the process that should pause).
PAUSE_DIRECTORY = "STREAM_TEST_PAUSE_DIRECTORY"
_paused_once: list[bool] = []


class PausingTree(tree.HoeffdingTreeClassifier):
    """A Hoeffding tree that, in a process whose environment names a :data:`PAUSE_DIRECTORY`,
    stops once in the middle of learning the first event with ``pause`` set: it creates ``paused``
    there and waits for ``go``. A test pauses the whole process meanwhile (SIGSTOP), at a point
    where it holds an open transaction and has learned past its last checkpoint."""

    def learn_one(self, x: dict, y: Any, **kwargs: Any) -> None:
        directory = os.environ.get(PAUSE_DIRECTORY)
        if directory and x.get("pause") and not _paused_once:
            _paused_once.append(True)
            (Path(directory) / "paused").touch()
            while not (Path(directory) / "go").exists():
                time.sleep(0.05)
        super().learn_one(x, y, **kwargs)


def pausing_tree() -> PausingTree:
    return PausingTree()
