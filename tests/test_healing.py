"""No single event can break a model: learning is all or nothing, and a model broken by an event
heals (stream/journal.py, ``Engine.process``). Through the per-record step that the service and
``stream replay`` share; the broker tests show the same in the service."""

from __future__ import annotations

import base64
import gc
import io
import json
import math
import tempfile

import pytest
from river import base

from connectors.base import Message
from stream import pickling
from stream.changelog import decode_example
from stream.config import Config, DriftConfig
from stream.errors import InvalidEvent, ModelFailure
from stream.events import Event, validate_event
from stream.prequential import Engine
from stream.replay import run_replay
from stream.service import Service
from stream.snapshots import SnapshotStore
from stream.step import RecordStep
from tests.fake_connector import FakeKafka, Killed
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
    real = pickling.dumps
    monkeypatch.setattr(pickling, "dumps", lambda state: pickled.append(1) or real(state))
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


@pytest.mark.benchmark
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


class Fragile(base.Classifier):
    """A classifier that some events break, so a test can say how: learning an event with a
    feature ``breaks_<f>`` leaves it unable to answer any input with feature ``f`` (non-finite
    probabilities), at once; with ``fuse_<f>``, at its next update (as a scaler's variance gone
    infinite turns NaN at its next update); with ``breaks_updates``, every later update fails; with
    ``mends_<f>``, it answers inputs with ``f`` again. It refuses to learn an event with feature
    ``refused``, and cannot answer one with feature ``nan``. It predicts the share of ``True`` labels
    learned."""

    def __init__(self) -> None:
        self.seen, self.trues = 0, 0
        self.broken: set[str] = set()
        self.fused: set[str] = set()
        self.updates_broken = False

    def learn_one(self, x: dict, y: bool) -> None:
        if "refused" in x or self.updates_broken:
            raise ValueError("refused")
        self.updates_broken = "breaks_updates" in x
        self.broken |= self.fused
        self.fused = {name.removeprefix("fuse_") for name in x if name.startswith("fuse_")}
        self.broken |= {name.removeprefix("breaks_") for name in x if name.startswith("breaks_")}
        self.broken -= {name.removeprefix("mends_") for name in x if name.startswith("mends_")}
        self.seen, self.trues = self.seen + 1, self.trues + (y is True)

    def predict_proba_one(self, x: dict) -> dict[bool, float]:
        if (self.broken | {"nan"}) & x.keys():
            return {False: math.nan, True: math.nan}
        p_true = (self.trues + 1) / (self.seen + 2)
        return {False: 1 - p_true, True: p_true}


def fragile() -> Fragile:
    return Fragile()


NAN_SYMPTOM = "ValueError: non-finite probabilities {False: nan, True: nan}"


def _fragile_engine(tmp_path) -> Engine:
    config = Config.model_validate({
        "model": {"task": "binary", "factory": "tests.test_healing:fragile"}, "drift": {"policy": "none"},
    })  # fmt: skip
    return Engine(config, SnapshotStore(tmp_path))


def _feed(engine: Engine, *xs: dict, y: bool = True) -> None:
    """Process events with features ``xs``; each event's id and origin are its position in ``xs``
    prefixed ``e``, unless it has a feature ``id`` naming it (not given to the model)."""
    for n, x in enumerate(xs):
        name = x.get("id", f"e{n}")
        engine.process(Event(x={k: v for k, v in x.items() if k != "id"}, y=y, id=name), origin=name)


A, B = {"a": 1.0}, {"b": 1.0}


def test_an_event_that_breaks_the_model_for_other_inputs_but_its_own_is_the_one_unlearned(tmp_path, caplog):
    """The event still gets an answer for its own features, not for what the good state answered:
    it is found when it is learned again, and alone unlearned; its dead letter, the error count and
    the log say why."""
    engine = _fragile_engine(tmp_path)
    engine.record_error()  # an undecodable record, counted before the good state below
    engine.checkpoint("checkpoint")
    poison = {"b": 1.0, "breaks_a": 1.0, "id": "poison"}
    _feed(engine, A, A, A, A, A, poison, B, B, B, B, B)  # nothing asked of the model fails yet
    engine.process(Event(x=A, y=True, id="asks-a"))  # fails, heals, then answered
    reason = f"learning this event broke the model ({NAN_SYMPTOM}); it was unlearned"
    assert engine.take_unlearned() == [("poison", reason)]
    assert engine.state.errors == 2 and engine.state.labelled == 11
    assert f"event poison: {reason}" in [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def test_a_full_journal_keeps_the_state_it_has_as_the_good_state_with_what_it_answered(tmp_path):
    """When the window of events kept is full, the next event starts a new good state: the state
    as it is, with the event it just answered. A checkpoint later asks that again: the poison
    learned since, which broke it, is found and alone unlearned; the events before the new good
    state stay learned."""
    engine = _fragile_engine(tmp_path)
    engine._journal.max_entries = 3
    poison = {"b": 1.0, "breaks_a": 1.0, "id": "poison"}
    _feed(engine, A, A, A, A, B, poison)  # the fourth A starts the new good state; B is asked last
    engine.checkpoint("checkpoint")
    assert [origin for origin, _ in engine.take_unlearned()] == ["poison"]
    assert engine.state.labelled == engine.state.model.seen == 5


def test_an_event_that_breaks_the_model_for_its_own_features_only_is_the_one_unlearned(tmp_path):
    """What the good state answered still answers; what the model answered last (the event's own
    features) does not: that is asked too, and the event is found and alone unlearned."""
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A, A, A, {"b": 1.0, "breaks_b": 1.0, "id": "poison"})
    engine.process(Event(x=B, y=True, id="asks-b"))
    assert [origin for origin, _ in engine.take_unlearned()] == ["poison"]
    assert engine.state.labelled == 5


def test_an_event_whose_trace_breaks_the_model_at_the_next_update_is_found_right_after_the_good_state(
    tmp_path,
):
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, {"a": 1.0, "fuse_a": 1.0, "id": "poison"}, A)  # the second update breaks it
    engine.process(Event(x=A, y=True, id="asks-a"))
    assert [origin for origin, _ in engine.take_unlearned()] == ["poison"]
    assert engine.state.labelled == 3


def test_the_culprit_is_the_latest_event_whose_absence_heals_the_breaking_event_too(tmp_path):
    """A trace waits for the next update; the event that turns it broken cannot answer for its own
    features. Leaving out the event just before it heals what the good state answered, not that
    event: the culprit is the one before."""
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A, {"a": 1.0, "fuse_c": 1.0, "id": "poison"}, A)
    joined = Event(x={"a": 1.0, "c": 1.0}, y=True, id="joined")  # its prediction made before the poison
    engine.learn_joined(joined, {"id": "joined", "y_pred": True, "y_proba": {False: 0.4, True: 0.6}})
    engine.checkpoint("checkpoint")  # its next update would break the model: heal first
    symptom = "it would not answer after its next update, found before a checkpoint"
    assert engine.take_unlearned() == [
        ("poison", f"learning this event broke the model ({symptom}); it was unlearned")
    ]
    assert engine.state.labelled == 4


def test_a_model_broken_by_no_event_it_learned_is_a_failure_not_dead_letters(tmp_path):
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A, B)
    engine.state.model.broken.add("a")  # its state damaged by something other than learning
    with pytest.raises(ModelFailure) as failure:
        engine.process(Event(x=A, y=True, id="asks-a"))
    assert str(failure.value) == (
        f"the model stopped answering ({NAN_SYMPTOM}), and no event learned since its last good state "
        "is the cause"
    )
    assert engine.take_unlearned() == []


def test_a_model_that_stops_answering_after_a_manual_rollback_is_a_failure_with_no_good_state(tmp_path):
    """No event reproduces a manual rollback, so there is nothing to heal from until the next
    event is learned: a rollback to a snapshot of a broken model fails, naming why."""
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A, {"a": 1.0, "breaks_a": 1.0})
    broken = engine.snapshot("manual")  # a snapshot is not a checkpoint: it does not heal first
    engine.rollback(broken.id)
    with pytest.raises(ModelFailure) as failure:
        engine.process(Event(x=A, y=True, id="asks-a"))
    assert str(failure.value) == f"the model stopped answering ({NAN_SYMPTOM}) and no good state is kept"


def test_a_joined_label_whose_learning_broke_the_model_is_handed_over_with_its_origin(tmp_path):
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A)
    poison = Event(x={"b": 1.0, "breaks_a": 1.0}, y=True, id="joined")
    engine.learn_joined(poison, {"id": "joined", "y_pred": True}, origin=("labels", 0, 7))
    engine.process(Event(x=A, y=True, id="asks-a"))
    assert [origin for origin, _ in engine.take_unlearned()] == [("labels", 0, 7)]


def test_a_joined_label_is_learned_after_a_manual_rollback(tmp_path):
    """A rollback leaves no good state: the joined label's learning keeps one first."""
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A)
    engine.rollback(engine.snapshot("manual").id)
    engine.learn_joined(Event(x=A, y=True, id="joined"), {"id": "joined", "y_pred": True})
    assert engine.state.labelled == 3


@pytest.mark.parametrize("good_state", ["checkpoint", "restore", "refusal"])
def test_what_the_good_state_answered_stays_the_measure_of_a_broken_model(tmp_path, good_state):
    """A new good state (a checkpoint, a restored snapshot, the state rebuilt after a refusal)
    keeps what it answered, not what the first event after it has: a poison then is found."""
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A)
    if good_state == "checkpoint":
        engine.checkpoint("checkpoint")
    elif good_state == "restore":
        engine = Engine(engine.config, engine.store, state=engine.store.load(engine.snapshot("manual").id))
        _feed(engine, A)
    else:
        with pytest.raises(InvalidEvent):
            engine.process(Event(x={"a": 1.0, "refused": 1.0}, y=True, id="refused"))
    _feed(engine, {"b": 1.0, "breaks_a": 1.0, "id": "poison"}, B)
    engine.process(Event(x=A, y=True, id="asks-a"))
    assert [origin for origin, _ in engine.take_unlearned()] == ["poison"]


def test_after_a_refusal_the_next_one_learns_nothing_again(tmp_path, monkeypatch):
    relearned = []
    real_relearn = Engine._relearn
    monkeypatch.setattr(
        Engine, "_relearn", lambda self, entry: relearned.append(entry.id) or real_relearn(self, entry)
    )
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A, A)
    for refused in ("first", "second"):
        with pytest.raises(InvalidEvent, match="the model cannot learn this event: ValueError: refused"):
            engine.process(Event(x={"a": 1.0, "refused": 1.0}, y=True, id=refused))
    assert relearned == ["e0", "e1", "e2"]  # the first refusal's rebuild is the new good state
    assert engine.state.labelled == 3


def test_an_event_the_model_cannot_predict_is_refused_with_the_reason_whether_or_not_it_healed(tmp_path):
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A)
    refusal = f"the model cannot predict this event: {NAN_SYMPTOM}"
    with pytest.raises(InvalidEvent) as refused:
        engine.process(Event(x={"a": 1.0, "nan": 1.0}, y=True, id="healthy"))
    assert str(refused.value) == refusal  # the model answers the rest: the event's own fault
    _feed(engine, {"b": 1.0, "breaks_a": 1.0, "id": "poison"})
    with pytest.raises(InvalidEvent) as refused:
        engine.process(Event(x={"a": 1.0, "nan": 1.0}, y=True, id="after-healing"))
    assert str(refused.value) == refusal
    assert [origin for origin, _ in engine.take_unlearned()] == ["poison"]


def test_a_checkpoint_heals_a_model_whose_next_update_would_break_what_its_good_state_answered(tmp_path):
    """The last event learned answers for its own features, now and after one more update; what
    the good state answered would not: it is unlearned before the checkpoint keeps the model."""
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A, {"b": 1.0, "fuse_a": 1.0, "id": "poison"})
    engine.checkpoint("checkpoint")
    assert [origin for origin, _ in engine.take_unlearned()] == ["poison"]


def test_a_checkpoint_leaves_a_healthy_model_as_it_was(tmp_path):
    engine = Engine(_config(), SnapshotStore(tmp_path))
    for n in range(20):
        engine.process(Event(x={"a": float(n % 3)}, y=n % 2 == 0, id=str(n)))
    before = canonical_pickle(engine.state.model)
    engine.checkpoint("checkpoint")  # its trial update is made on a copy
    assert canonical_pickle(engine.state.model) == before and engine.take_unlearned() == []


def test_a_checkpoint_heals_a_model_whose_next_update_would_fail(tmp_path):
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A, {"a": 1.0, "breaks_updates": 1.0, "id": "poison"})
    engine.checkpoint("checkpoint")
    assert [origin for origin, _ in engine.take_unlearned()] == ["poison"]
    _feed(engine, A)  # learned: the next event is not refused for the poison's sake
    assert engine.state.labelled == 3


def test_a_checkpoint_that_heals_after_its_trial_update_takes_the_number_it_would_have_had(tmp_path):
    """The trial update runs after the state is numbered and pickled; when it fails, the snapshot
    that is saved (after the heal) is numbered as if no other had been begun, its parent the last
    one saved."""
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A)
    first = engine.checkpoint("checkpoint")
    _feed(engine, A, {"a": 1.0, "breaks_updates": 1.0, "id": "poison"})
    healed = engine.checkpoint("checkpoint")
    assert [origin for origin, _ in engine.take_unlearned()] == ["poison"]
    assert (healed.sequence, healed.parent) == (first.sequence + 1, first.id)
    assert engine.state.next_sequence == healed.sequence + 1
    assert [m.id for m in engine.store.list()] == [first.id, healed.id]


def test_errors_counted_before_a_refusal_or_a_heal_stay_counted(tmp_path):
    """A refusal and a heal rebuild the state from the good one; the errors counted since (records
    that could not be decoded, events refused or unlearned) are not learning and stay counted."""
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A)
    engine.record_error()
    engine.record_error()
    with pytest.raises(InvalidEvent):
        engine.process(Event(x={"refused": 1.0}, y=True, id="refused"))
    engine.record_error()  # the caller counts the refused event
    assert engine.state.errors == 3
    # The refused event's features are what the good state answers now; the poison breaks them.
    _feed(engine, {"b": 1.0, "breaks_refused": 1.0, "id": "poison"}, B)
    engine.checkpoint("checkpoint")  # heals: the poison is unlearned and counted
    assert [origin for origin, _ in engine.take_unlearned()] == ["poison"]
    assert engine.state.errors == 4


def test_a_joined_label_that_breaks_the_answer_to_a_waiting_event_is_unlearned_at_the_checkpoint(tmp_path):
    """An event predicted while its label is still to come was the model's last answer; a joined
    label learned since breaks the model for that event's features only. The checkpoint finds the
    model broken for it, and the heal finds the label the cause, rather than failing."""
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A, A)
    engine.checkpoint("checkpoint")
    engine.answer(Event(x={"c": 1.0}, id="waiting"))
    label = Event(x={"b": 1.0, "breaks_c": 1.0}, y=True, id="joined")
    engine.learn_joined(label, {"id": "joined", "y_pred": True, "y_proba": {False: 0.4, True: 0.6}}, "joined")
    engine.checkpoint("checkpoint")
    unlearned = engine.take_unlearned()
    assert [origin for origin, _ in unlearned] == ["joined"]
    assert unlearned[0][1].startswith("learning this event broke the model (it would not answer")
    assert engine.answer(Event(x={"c": 1.0}, id="waiting"))["y_pred"] is not None


def test_a_heal_asks_for_what_the_model_answered_last_only_if_its_good_state_answered_it_too(tmp_path):
    """The good state cannot answer ``c``; an event learned since mended that, and ``c`` was the
    model's last answer. Asked of every event learned again, ``c`` would blame each one learned
    before the mending one: only the poison is unlearned."""
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, {"b": 1.0, "breaks_c": 1.0}, A)
    engine.checkpoint("checkpoint")  # answers A, not c
    mends = {"b": 1.0, "mends_c": 1.0, "id": "mends"}
    _feed(engine, {"b": 1.0, "id": "before-mending"}, mends, {"b": 1.0, "breaks_a": 1.0, "id": "poison"})
    engine.answer(Event(x={"c": 1.0}, id="waiting"))
    engine.process(Event(x=A, y=True, id="asks-a"))
    assert [origin for origin, _ in engine.take_unlearned()] == ["poison"]
    assert engine.state.labelled == 6


def test_each_event_learned_again_must_answer_for_its_own_features_not_only_the_last_answer(tmp_path):
    """Two events break the model, each for different inputs: one for its own features only, one
    for what the good state answered. Neither's features were the model's last answer; both are
    found when they are learned again, and unlearned."""
    engine = _fragile_engine(tmp_path)
    own = {"d": 1.0, "breaks_d": 1.0, "id": "breaks-its-own"}
    _feed(engine, A, A, own, {"b": 1.0, "breaks_a": 1.0, "id": "breaks-a"}, B)
    engine.process(Event(x=A, y=True, id="asks-a"))
    assert [origin for origin, _ in engine.take_unlearned()] == ["breaks-its-own", "breaks-a"]
    assert engine.state.labelled == 4
    assert engine.answer(Event(x={"d": 1.0}))["y_pred"] is True


def test_a_label_that_breaks_the_answer_to_a_waiting_event_is_unlearned_not_the_event_before_it(tmp_path):
    """Without the event learned before the label, the model still answers the label's own
    features and what the good state answered; it does not answer the waiting event, whatever
    is left out but the label: the label is the culprit."""
    engine = _fragile_engine(tmp_path)
    _feed(engine, A, A, A)
    engine.checkpoint("checkpoint")
    _feed(engine, {"a": 1.0, "id": "before"})
    engine.answer(Event(x={"c": 1.0}, id="waiting"))
    label = Event(x={"b": 1.0, "breaks_c": 1.0}, y=True, id="joined")
    engine.learn_joined(label, {"id": "joined", "y_pred": True, "y_proba": {False: 0.4, True: 0.6}}, "joined")
    engine.checkpoint("checkpoint")
    assert [origin for origin, _ in engine.take_unlearned()] == ["joined"]
    assert engine.state.labelled == 4
    assert engine.answer(Event(x={"c": 1.0}, id="waiting"))["y_pred"] is True


def _never_checkpointing(tmp_path, **kafka: str) -> Config:
    """The fragile model's service committing every batch and making no checkpoint (a restart
    re-learns everything); ``kafka``: more topics (a label topic)."""
    return Config.model_validate({
        "model": {"task": "binary", "factory": "tests.test_healing:fragile"},
        "drift": {"policy": "none"},
        "kafka": {"input_topic": "events", "predictions_topic": "predictions", "dead_letter_topic": "dead",
                  **kafka},
        "snapshots": {"directory": str(tmp_path / "snapshots")},
        "service": {"checkpoint_every_events": 10**6, "checkpoint_every_seconds": 3600,
                    "commit_every_seconds": 1e-9},
    })  # fmt: skip


def _run_until_killed_once_idle(config: Config, kafka: FakeKafka) -> None:
    """Run the service until it has read and committed everything, then kill it."""

    def die() -> None:
        raise Killed("killed once everything was read and committed")

    kafka.on_idle = die
    with pytest.raises(Killed):
        Service(config, kafka.connector(), "test").run()


def _died_after_committing_everything(tmp_path, xs: list[dict]) -> tuple[Config, FakeKafka]:
    """A service of the fragile model ran events with features ``xs`` (no ids), committed every
    batch and made no checkpoint (a restart re-learns every event), then died."""
    config = _never_checkpointing(tmp_path)
    kafka = FakeKafka()
    kafka.append("events", [json.dumps({"x": x, "y": True}).encode() for x in xs])
    _run_until_killed_once_idle(config, kafka)
    assert kafka.group_offsets[("stream", ("events", 0))] == (len(xs), "")
    return config, kafka


def test_a_restore_that_learns_a_poison_again_heals_it_under_the_name_it_was_first_given(tmp_path, caplog):
    """An event without an id is named after its partition and offset; the restore re-learns it
    under that name, so the heal that unlearns it again names it as the first run did (and does not
    dead-letter it twice)."""
    xs = [A, A, A, {"b": 1.0, "breaks_a": 1.0}, B, A]  # the poison at offset 3; the last A heals
    config, kafka = _died_after_committing_everything(tmp_path, xs)
    caplog.clear()
    service = Service(config, kafka.connector(), "test")
    kafka.on_idle = service.request_stop
    service.run()
    reason = f"learning this event broke the model ({NAN_SYMPTOM}); it was unlearned"
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"event events-0-3: {reason}"]
    assert [json.loads(letter)["source"]["offset"] for letter in kafka.values("dead")] == [3]


def test_a_poison_the_first_run_never_healed_is_dead_lettered_by_the_checkpoint_after_the_restore(tmp_path):
    """The first run learned a poison, published its prediction and committed, then died before
    anything asked the model what the poison broke. The restore learns it again; the checkpoint
    that follows the restore finds the model broken, unlearns it and dead-letters its record once
    (it names the record: it was never dead-lettered), and the service goes on."""
    xs = [A, A, A, {"b": 1.0, "breaks_a": 1.0}, B]  # the poison at offset 3; nothing asks for A after it
    config, kafka = _died_after_committing_everything(tmp_path, xs)
    assert kafka.values("dead") == []
    service = Service(config, kafka.connector(), "test")
    kafka.on_idle = service.request_stop
    service.run()
    letters = [json.loads(letter) for letter in kafka.values("dead")]
    assert [(letter["source"]["offset"], letter["event_base64"]) for letter in letters] == [
        (3, base64.b64encode(kafka.logs[("events", 0)][3].value or b"").decode())
    ]
    assert letters[0]["error"].startswith("learning this event broke the model")
    assert service.counters.dead_letters == 1 and service.counters.relearned == 5
    restored = SnapshotStore.from_config(config.snapshots, "events-0")
    assert restored.load(restored.list()[-1].id).labelled == 4  # the poison is not in what was kept


@pytest.mark.parametrize("poison_label", ["on the label topic", "in the event"])
def test_with_delayed_labels_a_poison_never_healed_is_dead_lettered_by_the_checkpoint_after_the_restore(
    tmp_path, poison_label
):
    """The same with delayed labels: the restore learns the examples again (the poison joined with
    its label, or one that brought its own); the checkpoint after it finds the model broken, unlearns
    the poison and dead-letters its example record, and the service goes on."""
    config = _never_checkpointing(tmp_path, label_topic="labels")
    xs = [A, A, A, B, {"b": 1.0, "breaks_a": 1.0}]  # the poison is e4; nothing asks for A after it
    events = [{"id": f"e{n}", "x": x} for n, x in enumerate(xs)]
    labels = [json.dumps({"id": e["id"], "y": True}).encode() for e in events[:4]]
    # Labels produced after their events join them and their predictions. The poison is learned
    # last: its label comes last, or it brings its own and is produced after every other label.
    produced = [1000, 1001, 1002, 1003, 1004]
    if poison_label == "in the event":
        events[4]["y"], produced[4] = True, 3000
    else:
        labels.append(json.dumps({"id": "e4", "y": True}).encode())
    kafka = FakeKafka()
    kafka.append("events", [json.dumps(e).encode() for e in events], produced)
    kafka.append("labels", labels, [2000 + n for n in range(len(labels))])
    _run_until_killed_once_idle(config, kafka)
    topic = config.kafka.examples_topic
    examples = [decode_example(record.value or b"")[1:] for record in kafka.logs[(topic, 0)]]
    assert [event.id for event, _ in examples] == [e["id"] for e in events]
    assert {event.id for event, kept in examples if kept is None} == {e["id"] for e in events if "y" in e}
    assert kafka.values("dead") == []
    service = Service(config, kafka.connector(), "test")
    kafka.on_idle = service.request_stop
    service.run()
    (letter,) = [json.loads(letter) for letter in kafka.values("dead")]
    assert letter["source"] == {"topic": topic, "partition": 0, "offset": 4}
    assert letter["error"].startswith("learning this event broke the model")
    assert service.counters.dead_letters == 1 and service.counters.relearned == len(xs)


def test_the_events_kept_for_healing_leave_the_garbage_collector_nothing_to_track():
    """Thousands of events are kept between checkpoints: as objects the collector tracks (a tuple
    per entry, a consumed record's NamedTuple) they made every full collection of the heap longer
    and more frequent (stream/journal.py). They come back as they were given. (After the rolling
    metrics' window of 1,000 events is full, and with no drift policy, whose buffer of recent
    events holds a few: both are bounded.)"""
    config = _config().model_copy(update={"drift": DriftConfig(policy="none")})
    engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="healing-")))
    step = RecordStep(config)
    lines = [json.dumps(event).encode() for event in drifting_events(3100)]

    def run(numbers: range) -> None:
        for n in numbers:
            assert (
                step(engine, lines[n], "events-0-", n, None, Message("events", 0, n, None, lines[n], 7))
                is None
            )

    run(range(1100))
    gc.collect()
    tracked = len(gc.get_objects())
    run(range(1100, 3100))
    gc.collect()
    assert len(gc.get_objects()) - tracked < 100  # 2 an event, 4,000, when entries were tuples
    assert engine._journal.latest.origin == Message("events", 0, 3099, None, lines[3099], 7)
    assert type(engine._journal.latest.origin) is Message
