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
checkpoint with the state :func:`loads` makes of the checkpoint's pickle. A class's own
``__setstate__`` is left to do its work, unless all it does is fill the instance's dict (River's
scalers: ``self.__dict__.update(state)``), which then runs on a stand-in whose attributes are
set inline on the object.

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
import types
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
            for cls, own in unpickler.patched:
                if own is None:
                    del cls.__setstate__
                else:
                    cls.__setstate__ = own


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


# All a class's own ``__setstate__`` may name to count as one that only fills the instance's dict
# from the state: River's scalers default a missing key (``state.setdefault``), then
# ``self.__dict__.update(state)``.
_DICT_FILLING_NAMES = frozenset({"__dict__", "update", "setdefault"})


def _only_fills_its_dict(setstate: Any) -> bool:
    """Whether ``setstate`` touches nothing but the state and the instance's dict: it calls no
    other function or method (by name, through a closure or a nested function), so running it on
    a stand-in and moving what it set onto the object does the same."""
    code = getattr(setstate, "__code__", None)
    return (
        isinstance(code, types.CodeType)
        and set(code.co_names) <= _DICT_FILLING_NAMES
        and not code.co_freevars
        and not any(isinstance(const, types.CodeType) for const in code.co_consts)
    )


def _inline_after(setstate: Any, cls: type) -> Any:
    """A ``__setstate__`` for ``cls`` that runs its own dict-filling one (see
    :func:`_only_fills_its_dict`) on a stand-in, then sets what it set as :func:`_inline_setstate`
    does: the object's attributes stay inline."""
    inline = _inline_setstate(cls)

    def __setstate__(obj: Any, state: Any) -> None:
        stand_in = types.SimpleNamespace()
        setstate(stand_in, state)
        inline(obj, vars(stand_in))

    return __setstate__


class _InlineUnpickler(pickle.Unpickler):
    """Gives each class it finds an inline ``__setstate__`` for the length of the load: one that
    has none, or whose own only fills the instance's dict. The caller puts back what was there
    (``patched``: each class and its own ``__setstate__``, None if it had none)."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.patched: list[tuple[type, Any]] = []

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if not isinstance(found, type):
            return found
        own = next((vars(k)["__setstate__"] for k in found.__mro__ if "__setstate__" in vars(k)), None)
        if own is None:
            setstate = _inline_setstate(found)
        elif _only_fills_its_dict(own):
            setstate = _inline_after(own, found)
        else:
            return found
        before = vars(found).get("__setstate__")
        try:
            found.__setstate__ = setstate  # type: ignore[attr-defined]
        except (TypeError, AttributeError):  # a built-in or extension type takes no attributes
            return found
        self.patched.append((found, before))
        return found
