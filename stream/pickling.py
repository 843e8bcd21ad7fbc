"""How learner states become bytes and back: snapshots, the journal's good state, restores.

:func:`loads` unpickles as :func:`pickle.loads` does, with one difference that matters for speed.
CPython 3.11 keeps an object's attributes inline (a compact array its attribute loads are
specialised for) until something asks for its ``__dict__``; from then on every attribute access
goes through a real dict and is slower. :func:`pickle.dumps` and :func:`copy.deepcopy` ask every
object they read for its ``__dict__``, and :func:`pickle.loads` fills each object it builds
through its ``__dict__``. So a River model unpickled, or one merely pickled (a checkpoint), learns
and predicts markedly slower than one built by learning: ``python -m benchmarks.unpickling``
measures how much. :func:`loads` sets each attribute of a plain object as its constructor
would, so the objects it builds keep their attributes inline; the engine continues after a
checkpoint with the state :func:`loads` makes of the checkpoint's pickle.

>>> from river import linear_model
>>> model = linear_model.LogisticRegression()
>>> model.learn_one({"a": 1.0}, True)
>>> copy = loads(dumps(model))
>>> copy.weights == model.weights and copy is not model
True
"""

from __future__ import annotations

import io
import pickle
import threading
from typing import Any

_PATCHING = threading.Lock()  # one load at a time adds and removes the classes' __setstate__


def dumps(state: Any) -> bytes:
    """The pickle of ``state`` (the highest protocol: the fastest and smallest)."""
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def loads(payload: bytes) -> Any:
    """The object pickled in ``payload``, its plain objects' attributes kept inline (see above).

    Only for trusted payloads, as :func:`pickle.loads`: snapshots are verified first.
    """
    with _PATCHING:
        unpickler = _InlineUnpickler(io.BytesIO(payload))
        try:
            return unpickler.load()
        finally:
            for cls in unpickler.patched:
                del cls.__setstate__


def _data_descriptors(cls: type) -> frozenset[str]:
    """Names whose assignment a class intercepts (properties, slots): those go to the dict."""
    return frozenset(
        name for klass in cls.__mro__ for name, value in vars(klass).items() if hasattr(value, "__set__")
    )


def _inline_setstate(cls: type) -> Any:
    """A ``__setstate__`` for ``cls`` that does what unpickling does with the state of an object
    without one, but through ``object.__setattr__`` rather than the object's ``__dict__``."""
    intercepted = _data_descriptors(cls)

    def __setstate__(obj: Any, state: Any) -> None:
        slots = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        if state:
            if not isinstance(state, dict):
                raise pickle.UnpicklingError("state is not a dictionary")
            names = intercepted if type(obj) is cls else _data_descriptors(type(obj))
            for name, value in state.items():
                if name in names:  # as pickle has it: the instance dict holds it
                    obj.__dict__[name] = value
                else:
                    object.__setattr__(obj, name, value)
        if slots:
            for name, value in slots.items():
                setattr(obj, name, value)

    return __setstate__


class _InlineUnpickler(pickle.Unpickler):
    """Gives each class it finds that has no ``__setstate__`` an inline one for the length of the
    load (the caller removes them)."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.patched: list[type] = []

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if isinstance(found, type) and not any("__setstate__" in vars(k) for k in found.__mro__):
            try:
                found.__setstate__ = _inline_setstate(found)  # type: ignore[attr-defined]
            except (TypeError, AttributeError):  # a built-in or extension type takes no attributes
                return found
            self.patched.append(found)
        return found
