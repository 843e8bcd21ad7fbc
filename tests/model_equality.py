"""Comparing learned models by their whole state."""

from __future__ import annotations

import io
import pickle
import random
from typing import Any


class _CanonicalPickler(pickle.Pickler):
    """Pickles by value: no memo (so object identity, such as two equal feature-name strings
    decoded from different messages, does not count) and every ``random.Random`` state blanked.

    River seeds some internals from OS entropy when no seed is given (``proba.Gaussian`` in every
    Hoeffding tree leaf keeps an unseeded ``random.Random`` that only ``sample()`` uses), so two
    uninterrupted runs never pickle identically; everything else must.
    """

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is random.Random:
            return random.Random, (0,)
        return NotImplemented


def canonical_pickle(obj: Any) -> bytes:
    buffer = io.BytesIO()
    pickler = _CanonicalPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True  # no memo; raises on a reference cycle rather than comparing wrongly
    pickler.dump(obj)
    return buffer.getvalue()
