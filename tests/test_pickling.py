"""stream.pickling: states unpickled as pickle.loads does, their objects' attributes kept inline
(CPython 3.11 slows the attribute reads of an object whose ``__dict__`` was asked for)."""

from __future__ import annotations

import gc
import pickle
import tempfile
from typing import Any

import pytest
from river import forest, linear_model, preprocessing, tree

from stream import pickling
from stream.config import Config
from stream.events import Event
from stream.prequential import Engine
from stream.snapshots import SnapshotStore
from tests.kafka_helpers import drifting_events
from tests.model_equality import canonical_pickle


def has_attribute_dict(obj: Any, attribute: str) -> bool:
    """Whether ``obj`` holds its attributes in a dict (materialized), told without asking for its
    ``__dict__`` (which would materialize it): the garbage collector sees the dict among what the
    object refers to, rather than the attribute values themselves."""
    value, missing = getattr(obj, attribute), object()
    return any(type(r) is dict and r.get(attribute, missing) is value for r in gc.get_referents(obj))


class Plain:
    def __init__(self) -> None:
        self.count = 1
        self.name = "plain"


class WithProperty:
    """An instance dict entry shadowed by a property of the same name."""

    def __init__(self) -> None:
        self.__dict__["shadowed"] = "in the dict"
        self.kept = 2

    @property
    def shadowed(self) -> str:
        return "from the property"


class WithSlots:
    __slots__ = ("a", "b")

    def __init__(self) -> None:
        self.a, self.b = 1, [2]


class WithSetstate:
    def __init__(self) -> None:
        self.value = 1

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, restored=True)


class WithSetstateDoingMore:
    """Its ``__setstate__`` calls a method of its own: it runs on the object itself."""

    def __init__(self) -> None:
        self.value = 1

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.note_restored()

    def note_restored(self) -> None:
        self.restored_on = id(self)


def test_objects_it_loads_keep_their_attributes_inline_where_pickle_loads_puts_them_in_a_dict():
    payload = pickling.dumps(Plain())
    assert has_attribute_dict(pickle.loads(payload), "name")  # what this module is for
    loaded = pickling.loads(payload)
    assert not has_attribute_dict(loaded, "name") and (loaded.count, loaded.name) == (1, "plain")
    assert not hasattr(Plain, "__setstate__")  # the class is as it was


def test_properties_slots_and_own_setstate_load_as_pickle_loads_them():
    loaded = pickling.loads(pickling.dumps([WithProperty(), WithSlots(), WithSetstate()]))
    with_property, with_slots, with_setstate = loaded
    assert vars(with_property) == {"shadowed": "in the dict", "kept": 2}
    assert with_property.shadowed == "from the property"
    assert (with_slots.a, with_slots.b) == (1, [2])
    assert vars(with_setstate) == {"value": 1, "restored": True}
    assert not any(hasattr(cls, "__setstate__") for cls in (WithProperty, WithSlots))


def test_an_own_setstate_that_only_fills_the_dict_loads_inline_and_is_put_back():
    """River's scalers default a missing key, then update their dict: run on a stand-in, what it
    set is moved onto the object inline (a scaler unpickled learned ~20% slower without this)."""
    own = WithSetstate.__setstate__
    loaded = pickling.loads(pickling.dumps(WithSetstate()))
    assert not has_attribute_dict(loaded, "restored") and (loaded.value, loaded.restored) == (1, True)
    assert WithSetstate.__setstate__ is own
    scaler, scalers_own = preprocessing.StandardScaler(), vars(preprocessing.StandardScaler)["__setstate__"]
    scaler.learn_one({"a": 1.0})
    copy = pickling.loads(pickling.dumps(scaler))
    assert not has_attribute_dict(copy, "means") and copy.window_size is None
    assert vars(preprocessing.StandardScaler)["__setstate__"] is scalers_own
    assert has_attribute_dict(pickle.loads(pickle.dumps(scaler)), "means")  # what it would be


def test_an_own_setstate_that_does_more_runs_on_the_object_itself():
    own = WithSetstateDoingMore.__setstate__
    loaded = pickling.loads(pickling.dumps(WithSetstateDoingMore()))
    assert (loaded.value, loaded.restored_on) == (1, id(loaded))
    assert WithSetstateDoingMore.__setstate__ is own


@pytest.mark.parametrize(
    "model",
    [
        preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        tree.HoeffdingTreeClassifier(),
        forest.ARFClassifier(n_models=3, seed=1),
    ],
    ids=["linear", "tree", "forest"],
)
def test_a_river_model_loaded_is_the_model_pickled_and_learns_on_alike(model):
    events = drifting_events(600)
    for event in events[:300]:
        model.learn_one(event["x"], event["y"])
    copy = pickling.loads(pickling.dumps(model))
    assert canonical_pickle(copy) == canonical_pickle(pickle.loads(pickle.dumps(model)))
    for event in events[300:]:
        assert copy.predict_proba_one(event["x"]) == model.predict_proba_one(event["x"])
        model.learn_one(event["x"], event["y"])
        copy.learn_one(event["x"], event["y"])
    assert canonical_pickle(copy) == canonical_pickle(model)


def test_after_each_snapshot_the_engine_goes_on_with_a_state_whose_attributes_are_inline():
    model = {"task": "binary", "pipeline": ["tree.HoeffdingTreeClassifier"]}
    config = Config.model_validate({"model": model})
    engine = Engine(config, SnapshotStore(tempfile.mkdtemp()))
    reference = Engine(config, SnapshotStore(tempfile.mkdtemp()))
    events = [Event(x=e["x"], y=e["y"], id=str(n)) for n, e in enumerate(drifting_events(1_000))]
    for event in events[:500]:
        engine.process(event)
        reference.process(event)
    assert engine.state.snapshots > 0  # a drift's: it pickled the state
    assert not has_attribute_dict(engine.state.model, "grace_period")
    engine.checkpoint("checkpoint")  # pickles the state (and copies the model for a trial update)
    assert not has_attribute_dict(engine.state.model, "grace_period")
    assert not has_attribute_dict(engine.state.model._root, "stats")
    # The same engine, as if nothing happened: the next predictions are the uninterrupted run's.
    for event in events[500:]:
        assert engine.process(event) == reference.process(event)
    # A snapshot loaded (a restore, a rollback) and the journal's good state are inline too.
    restored = engine.store.load(engine.store.list()[-1].id)
    assert not has_attribute_dict(restored.model, "grace_period")
    assert not has_attribute_dict(engine._journal.base_state().model, "grace_period")
