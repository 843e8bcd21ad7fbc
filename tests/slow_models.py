"""Models that learn slowly, for restores that take longer than a group allows between polls.

Used as ``model.factory: "tests.slow_models:slow_tree"``; picklable, since snapshots pickle it.
"""

from __future__ import annotations

import time
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
