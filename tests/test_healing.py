"""No single event can break a model: learning is all or nothing, and a model broken by an event
heals (stream/journal.py, ``Engine.process``). Through the per-record step that the service and
``stream replay`` share; the broker tests show the same in the service."""

from __future__ import annotations

import io
import json
import tempfile

import pytest

from stream import prequential
from stream.config import Config
from stream.errors import ModelFailure
from stream.events import Event, validate_event
from stream.prequential import Engine
from stream.replay import run_replay
from stream.snapshots import SnapshotStore
from tests.kafka_helpers import drifting_events
from tests.model_equality import canonical_pickle

POISONS = [
    {"x": {"salary": 1e308, "age": 0.0}, "y": True},
    {"x": {"salary": -1e200, "loan": 1e200}, "y": False},
    {"x": {"salary": 1e300, "age": 30}, "y": True},
]


def _replay(config: Config, events: list[dict]) -> tuple[list[dict], list[dict], Engine]:
    engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="healing-")))
    predictions, dead_letters = io.StringIO(), io.StringIO()
    records = [(n, json.dumps(event).encode()) for n, event in enumerate(events)]
    run_replay(records, engine, predictions, dead_letters)
    decoded = [[json.loads(line) for line in f.getvalue().splitlines()] for f in (predictions, dead_letters)]
    return decoded[0], decoded[1], engine


def _config(task: str = "binary", pipeline: list | None = None) -> Config:
    model = {
        "task": task,
        "pipeline": pipeline or ["preprocessing.StandardScaler", "linear_model.LogisticRegression"],
    }
    return Config.model_validate({"model": model})


def _regression(events: list[dict]) -> list[dict]:
    return [{**event, "y": event["x"]["salary"] / 1000 - event["x"]["age"]} for event in events]


@pytest.mark.parametrize("poison", POISONS)
@pytest.mark.parametrize("task", ["binary", "regression"])
def test_an_event_whose_learning_breaks_the_model_is_unlearned_and_the_model_goes_on(task, poison):
    events = drifting_events(600)
    poisoned = {**poison, "id": "poison"}
    if task == "regression":
        events = _regression(events)
        poisoned["y"] = 1.0
        config = _config("regression", ["preprocessing.StandardScaler", "linear_model.LinearRegression"])
    else:
        config = _config()
    stream = [*events[:300], poisoned, *events[300:]]
    predictions, dead_letters, healed = _replay(config, stream)
    expected, _, clean = _replay(config, events)

    # The poison is dead-lettered: refused at once, or predicted, then found when the model broke
    # and unlearned. The event after it may have been predicted by the poisoned model (found when
    # the model broke on the next one); from then on the predictions are the clean run's.
    assert [letter["source"]["position"] for letter in dead_letters] == [300]
    # 1e308 is predicted (the scaler has seen no such value yet), then breaks the model at the
    # next update: only healing can find it.
    found_by_healing = "broke the model" in dead_letters[0]["error"]
    assert found_by_healing or "cannot predict" in dead_letters[0]["error"]
    assert found_by_healing or poison is not POISONS[0]
    assert [p for p in predictions if p["id"] != "poison"][301:] == expected[301:]
    assert [p for p in predictions if p["id"] != "poison"][:300] == expected[:300]
    assert canonical_pickle(healed.state.model) == canonical_pickle(clean.state.model)
    assert healed.state.labelled == clean.state.labelled and healed.state.drifts == clean.state.drifts


def test_learning_is_all_or_nothing_when_a_pipeline_refuses_an_event_part_way():
    events = [{"x": {"a": float(n % 5), "b": 1.0}, "y": n % 2 == 0, "id": str(n)} for n in range(200)]
    # The scaler accepts a string feature's first sighting; the linear model then refuses it.
    refused = {"x": {"a": 1.0, "b": "text"}, "y": True, "id": "refused"}
    predictions, dead_letters, engine = _replay(_config(), [*events[:100], refused, *events[100:]])
    expected, _, clean = _replay(_config(), events)
    assert [letter["source"]["position"] for letter in dead_letters] == [100]
    assert "refused" not in {p["id"] for p in predictions}  # exactly one outcome: the dead letter
    assert predictions == expected
    assert canonical_pickle(engine.state.model) == canonical_pickle(clean.state.model)  # no trace


def test_a_model_that_stops_answering_for_no_event_of_its_own_is_a_failure_not_dead_letters(monkeypatch):
    engine = Engine(_config(), SnapshotStore(tempfile.mkdtemp()))
    for n in range(50):
        engine.process(Event(x={"a": float(n % 3)}, y=n % 2 == 0, id=str(n)))
    # A fault outside any event (a bug, say): every prediction fails from now on, whatever the state.
    monkeypatch.setattr(type(engine.state.model), "predict_proba_one", lambda self, x: 1 / 0)
    with pytest.raises(ModelFailure, match="its last good state does not answer either"):
        engine.process(Event(x={"a": 1.0}, y=True, id="next"))
    assert engine.unlearned == []


def test_a_checkpoint_never_keeps_a_broken_model(tmp_path):
    engine = Engine(_config(), SnapshotStore(tmp_path))
    for n in range(20):
        engine.process(Event(x={"a": float(n % 3)}, y=n % 2 == 0, id=str(n)), origin=n)
    engine.process(Event(x={"a": 1e308}, y=True, id="poison"), origin="poison")
    manifest = engine.checkpoint("checkpoint")
    assert (
        engine.unlearned == [("poison", engine.unlearned[0][1])]
        and "broke the model" in engine.unlearned[0][1]
    )
    kept = engine.store.load(manifest.id).model
    assert kept.predict_proba_one({"a": 1.0})[True] == pytest.approx(
        engine.predict(Event(x={"a": 1.0}))["y_proba"][True]
    )


def test_the_loop_pickles_nothing_and_healing_starts_from_the_last_checkpoint(tmp_path, monkeypatch):
    pickled = []
    real = prequential._pickled
    monkeypatch.setattr(prequential, "_pickled", lambda state: pickled.append(1) or real(state))
    relearned = []
    real_relearn = Engine._relearn
    monkeypatch.setattr(
        Engine, "_relearn", lambda self, entry: relearned.append(entry.id) or real_relearn(self, entry)
    )
    engine = Engine(_config(), SnapshotStore(tmp_path))
    for n in range(300):
        engine.process(Event(x={"a": float(n % 3)}, y=n % 2 == 0, id=str(n)))
    assert pickled == []  # a fresh model is its own good state: no pickle, no materialized dicts
    engine.checkpoint("checkpoint")
    assert len(pickled) == 1  # the checkpoint's pickle, kept as the good state too
    for n in range(300, 310):
        engine.process(Event(x={"a": float(n % 3)}, y=n % 2 == 0, id=str(n)))
    engine.process(Event(x={"a": 1e308}, y=True, id="poison"), origin="poison")
    for n in range(310, 313):
        engine.process(Event(x={"a": float(n % 3)}, y=n % 2 == 0, id=str(n)), origin=n)
    assert [origin for origin, _ in engine.take_unlearned()] == ["poison"]
    assert relearned and set(relearned) <= {str(n) for n in range(300, 313)} | {"poison"}


def test_limits_turn_what_would_grow_a_model_without_bound_into_dead_letters():
    config = Config.model_validate({
        "model": {"task": "multiclass", "pipeline": ["tree.HoeffdingTreeClassifier"]},
        "limits": {"max_features": 5, "max_label_chars": 8, "max_proba_classes": 3},
    })  # fmt: skip
    labelled = [{"x": {"a": float(n % 7)}, "y": f"class-{n % 6}", "id": str(n)} for n in range(200)]
    wide = {"x": {f"f{n}": 1.0 for n in range(6)}, "y": "class-1", "id": "wide"}
    long_label = {"x": {"a": 1.0}, "y": "x" * 9, "id": "long"}
    predictions, dead_letters, engine = _replay(config, [*labelled, wide, long_label])
    reasons = {letter["source"]["position"]: letter["error"] for letter in dead_letters}
    assert reasons == {
        200: "event has 6 features; limits.max_features=5",
        201: "label of 9 characters; limits.max_label_chars=8",
    }
    # Six classes known; each prediction carries the three most probable, in the model's order.
    full = engine.state.model.predict_proba_one({"a": 4.0})
    assert len(full) == 6
    top = engine.predict(validate_event({"x": {"a": 4.0}}, "multiclass"))["y_proba"]
    assert top == {label: p for label, p in full.items() if p >= sorted(full.values())[-3]}
    assert max(len(p["y_proba"]) for p in predictions) == 3


@pytest.mark.parametrize(("first", "other"), [("red", 3), (1, True), (True, 1), (2, "2")])
def test_a_multiclass_model_keeps_one_kind_of_label_and_refuses_the_mix(first, other):
    config = Config.model_validate(
        {"model": {"task": "multiclass", "pipeline": ["tree.HoeffdingTreeClassifier"]}}
    )
    events = [{"x": {"a": float(n % 3)}, "y": first, "id": str(n)} for n in range(20)]
    events.append({"x": {"a": 1.0}, "y": other, "id": "other"})
    events += [{"x": {"a": float(n % 3)}, "y": first, "id": f"after-{n}"} for n in range(20)]
    predictions, dead_letters, engine = _replay(config, events)
    assert [letter["source"]["position"] for letter in dead_letters] == [20]
    assert f"label {other!r} is a {type(other).__name__}" in dead_letters[0]["error"]
    assert len(predictions) == 40 and engine.state.labelled == 40


def test_the_journal_benchmark_compares_the_engine_with_and_without_it():
    import subprocess
    import sys

    from tests import REPO_ROOT

    command = [
        sys.executable,
        "-m",
        "benchmarks.journal",
        "--events",
        "300",
        "--pairs",
        "4",
        "--checkpoint-every",
        "100",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [
        line.split()
        for line in result.stdout.splitlines()
        if line.startswith(("StandardScaler", "Hoeffding"))
    ]
    assert len(rows) == 2 and all(0.3 < float(row[3]) < 3 for row in rows)
