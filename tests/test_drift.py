from __future__ import annotations

import logging
import tempfile
from collections import deque

import pytest

from stream.config import Config, DriftConfig
from stream.datasets import as_event, recurring_concepts
from stream.drift import DECIDE, DRIFT, NO_SIGNAL, WARNING, Decision, DriftMonitor, loss_of
from stream.errors import ModelError
from stream.events import Event, validate_event
from stream.prequential import Engine
from stream.snapshots import SnapshotStore

SEGMENT = 5000


def _run(policy: str, segment: int = SEGMENT, concepts=(0, 2, 0), **drift) -> tuple[Engine, list[bool]]:
    config = Config.model_validate(
        {"model": {"pipeline": ["tree.HoeffdingTreeClassifier"]}, "drift": {"policy": policy, **drift}}
    )
    engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="drift-")))
    correct = []
    for record in recurring_concepts(segment, concepts):
        prediction = engine.process(validate_event(as_event(record), "binary"))
        correct.append(prediction["y_pred"] == record["y"])
    return engine, correct


def test_policy_best_rolls_back_to_concept_a_when_it_returns_and_beats_no_policy():
    """Agrawal function 0 -> 2 -> 0, abrupt: the concept-A model is worth returning to."""
    returned_at = 2 * SEGMENT
    baseline, baseline_correct = _run("none")
    engine, correct = _run("best")
    baseline_accuracy = sum(baseline_correct[returned_at : returned_at + 1000]) / 1000
    accuracy = sum(correct[returned_at : returned_at + 1000]) / 1000

    rollbacks_after_return = [
        d for d in engine.state.decisions if d["event"] > returned_at and d["action"] == "rollback"
    ]
    assert rollbacks_after_return, engine.state.decisions
    snapshot_id = rollbacks_after_return[0]["winner"].removeprefix("snapshot:")
    restored_from = engine.store.get(snapshot_id)
    assert restored_from.events_seen <= SEGMENT + 500  # a model of concept A
    assert accuracy >= baseline_accuracy + 0.25, (accuracy, baseline_accuracy)
    assert baseline.state.drifts >= 1 and baseline.state.snapshots == 0


def test_every_decision_records_each_candidate_score():
    engine, _ = _run("best", segment=2000)
    assert engine.state.decisions
    for decision in engine.state.decisions:
        assert "current" in decision["candidates"] and "fresh" in decision["candidates"]
        assert decision["winner"] in decision["candidates"]
        assert decision["candidates"][decision["winner"]] == min(decision["candidates"].values())
        assert decision["buffer_size"] == 200
    assert engine.summary().decisions == engine.state.decisions


def test_policy_reset_switches_to_a_fresh_model_after_a_drift():
    engine, _ = _run("reset", segment=2000)
    assert engine.state.resets == len(engine.state.decisions) >= 1
    assert {d["winner"] for d in engine.state.decisions} == {"fresh"}
    assert engine.state.model_version == 1 + engine.state.resets


def test_policy_rollback_only_considers_snapshots():
    engine, _ = _run("rollback", segment=2000)
    decided = [d for d in engine.state.decisions if d["candidates"]]
    assert decided
    assert all(name.startswith("snapshot:") for d in decided for name in d["candidates"])
    assert engine.state.rollbacks == len(decided)


def test_policy_snapshot_snapshots_drifts_without_switching():
    engine, _ = _run("snapshot", segment=2000)
    assert engine.state.drifts >= 1
    assert len(engine.store.list(reason="drift")) == engine.state.drifts
    assert engine.state.model_version == 1 and engine.state.decisions == []


def test_a_warning_takes_a_snapshot_and_starts_a_challenger():
    engine, _ = _run("best", segment=3000, detector="drift.binary.DDM")
    assert engine.state.warnings >= 1
    kept = min(engine.state.warnings, engine.config.snapshots.keep_last)  # warnings rotate
    assert len(engine.store.list(reason="warning")) == kept
    assert any("challenger" in d["candidates"] for d in engine.state.decisions)


def test_the_decision_waits_for_a_full_buffer_of_post_drift_events():
    monitor = DriftMonitor.create(
        DriftConfig(detector={"drift.PageHinkley": {"min_instances": 5}}, buffer_size=10), "binary"
    )
    signals = [monitor.update({"a": 1}, True, 0.0) for _ in range(50)]
    signals += [monitor.update({"a": 1}, True, 1.0) for _ in range(200)]
    first_drift = signals.index(DRIFT)
    assert signals[first_drift + 1 : first_drift + 10] == [NO_SIGNAL] * 9
    assert signals[first_drift + 10] == DECIDE
    assert len(monitor.buffer) == 10


def test_a_binary_detector_is_refused_for_regression():
    with pytest.raises(ModelError, match="0/1 input"):
        DriftMonitor.create(DriftConfig(detector="drift.binary.DDM"), "regression")
    with pytest.raises(ModelError, match=r"class from river\.drift"):
        DriftMonitor.create(DriftConfig(detector="linear_model.LinearRegression"), "binary")


class _Constant:
    """A model that predicts ``value``; with ``learns``, the last label it learned."""

    def __init__(self, value, learns: bool = False) -> None:
        self.value, self.learns = value, learns

    def predict_one(self, x):
        return self.value

    def learn_one(self, x, y) -> None:
        if self.learns:
            self.value = y


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_candidates_are_scored_by_their_mean_loss_on_the_buffer(task):
    monitor = DriftMonitor.create(DriftConfig(buffer_size=10), task)
    labels = [True, True, False, True] if task == "binary" else [1.0, 3.0, 2.0, 6.0]
    for label in labels:
        monitor.buffer.append(({"a": 1.0}, label, 0.5))  # (x, y, the current model's loss)
    decision, _ = monitor.choose(
        "best", 100, _Constant(None), [("00000001-drift", lambda: _Constant(labels[0]))],
        _Constant(labels[-1], learns=True),
    )  # fmt: skip
    if task == "binary":  # 0/1 loss: the snapshot misses one of four, the fresh model (last label, then
        expected = {"snapshot:00000001-drift": 0.25, "fresh": 0.5}  # each previous one) two of four
    else:  # absolute error: |1-1|+|3-1|+|2-1|+|6-1| and |1-6|+|3-1|+|2-3|+|6-2|
        expected = {"snapshot:00000001-drift": 2.0, "fresh": 3.0}
    assert decision.candidates == {"current": 0.5, **expected}
    assert decision.winner == ("current" if task == "regression" else "snapshot:00000001-drift")


def test_with_an_empty_buffer_the_decision_is_to_keep_the_current_model():
    monitor = DriftMonitor.create(DriftConfig(), "binary")
    current = _Constant(True)
    decision, model = monitor.choose(
        "best", 42, current, [("00000001-drift", lambda: _Constant(False))], None
    )
    assert (decision, model) == (Decision(42, "best", {}, "current", "keep", 0), current)


def test_a_snapshot_that_cannot_be_loaded_is_no_candidate_and_the_log_says_why(tmp_path, caplog):
    config = Config.model_validate({"drift": {"policy": "rollback"}})
    engine = Engine(config, SnapshotStore(tmp_path))
    manifest = engine.snapshot("drift")
    (tmp_path / manifest.id / "state.pkl").write_bytes(b"damaged")
    assert engine._model_loader(manifest.id)() is None
    assert any(
        m.startswith(f"snapshot {manifest.id} is not a candidate: snapshot {manifest.id} is corrupted")
        for m in caplog.messages
    )


@pytest.mark.parametrize("policy", ["none", "snapshot", "reset", "best"])
def test_the_challenger_competes_under_policy_best_alone_with_its_mean_loss(policy):
    monitor = DriftMonitor.create(DriftConfig(buffer_size=10), "binary")
    for label in (True, True, False, True):
        monitor.buffer.append(({"a": 1.0}, label, 0.5))
    monitor.challenger, monitor.challenger_losses = _Constant(True), [0.0, 0.5, 0.0, 0.1]
    current = _Constant(False)
    decision, model = monitor.choose(policy, 7, current, [], _Constant(False))
    expected = {
        "none": {}, "snapshot": {}, "reset": {"fresh": 0.75},
        "best": {"current": 0.5, "fresh": 0.75, "challenger": 0.15},
    }[policy]  # fmt: skip
    assert decision.candidates == expected and decision.buffer_size == 4
    if policy == "best":
        assert (decision.winner, decision.action, model) == ("challenger", "challenger", monitor.challenger)
    elif policy == "reset":  # the only candidate wins, even when worse than the current model was
        assert (decision.winner, decision.action) == ("fresh", "reset")
    else:
        assert (decision.winner, decision.action, model) == ("current", "keep", current)


class _Lookup:
    """A model that predicts, for each input, the label it last learned for it (``default`` else)."""

    def __init__(self, default=0.0) -> None:
        self.default, self.seen = default, {}

    def predict_one(self, x):
        return self.seen.get(tuple(sorted(x.items())), self.default)

    def learn_one(self, x, y) -> None:
        self.seen[tuple(sorted(x.items()))] = y


class _ScriptedDetector:
    """A detector that signals as ``script`` says, one character per update: ``w`` a warning, ``D``
    a drift, anything else neither."""

    def __init__(self, script: str) -> None:
        self.script, self.updates = script, 0
        self.drift_detected = self.warning_detected = False

    def update(self, loss: float) -> None:
        signal = self.script[self.updates] if self.updates < len(self.script) else "."
        self.updates += 1
        self.drift_detected, self.warning_detected = signal == "D", signal == "w"

    def clone(self) -> _ScriptedDetector:
        return _ScriptedDetector("")


def test_a_warning_is_signalled_on_entering_the_zone_and_its_challenger_dropped_on_leaving_it():
    monitor = DriftMonitor.create(DriftConfig(buffer_size=10), "regression")
    monitor.detector = _ScriptedDetector("ww.wwD")
    signals = []
    for n, label in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]):
        signals.append(monitor.update({"n": n % 2}, label, 0.5))
        if signals[-1] == WARNING:
            monitor.start_challenger(_Lookup(default=1.0))
        if n == 1:  # trained since the warning: its loss on each event before learning it
            assert (monitor.challenger.seen, monitor.challenger_losses) == ({(("n", 1),): 2.0}, [1.0])
        if n == 2:  # out of the zone: no decision is coming, the challenger is dropped
            assert (monitor.challenger, monitor.challenger_losses) == (None, [])
    assert signals == [WARNING, NO_SIGNAL, NO_SIGNAL, WARNING, NO_SIGNAL, DRIFT]
    assert monitor.challenger.seen == {(("n", 0),): 5.0, (("n", 1),): 6.0}
    assert monitor.challenger_losses == [4.0, 5.0]


def test_a_challenger_outlives_the_warning_zone_while_a_decision_is_pending():
    monitor = DriftMonitor.create(DriftConfig(buffer_size=10), "binary")
    monitor.detector = _ScriptedDetector("wDw.")
    signals = [monitor.update({"a": 1.0}, True, 1.0)]
    monitor.start_challenger(_Lookup(default=True))
    signals += [monitor.update({"a": 1.0}, True, 1.0) for _ in range(3)]
    assert signals == [WARNING, DRIFT, WARNING, NO_SIGNAL]
    assert monitor.challenger is not None and monitor.challenger_losses == [0.0, 0.0, 0.0]


def test_after_a_drift_the_buffer_collects_events_until_the_decision_then_stops():
    monitor = DriftMonitor.create(DriftConfig(buffer_size=10), "binary")
    monitor.detector = _ScriptedDetector("D")
    events = [({"a": float(n)}, n % 2 == 0, float(n % 3)) for n in range(12)]
    signals = [monitor.update(*event) for event in events]
    assert signals == [DRIFT, *[NO_SIGNAL] * 9, DECIDE, NO_SIGNAL]
    assert list(monitor.buffer) == events[1:11]


def test_after_a_decision_the_monitor_starts_over_and_a_switched_model_gets_a_fresh_detector():
    monitor = DriftMonitor.create(DriftConfig(buffer_size=10), "binary")
    for _ in range(50):
        monitor.update({"a": 1.0}, True, 0.0)
    monitor.buffer.append(({"a": 1.0}, True, 0.0))
    monitor.start_challenger(_Lookup())
    monitor.in_warning = monitor.deciding = True
    monitor.after_decision(switched=False)
    assert monitor.detector.width == 50  # the same model: the same detector, with what it has seen
    monitor.after_decision(switched=True)
    assert type(monitor.detector).__name__ == "ADWIN" and monitor.detector.width == 0
    assert (list(monitor.buffer), monitor.challenger, monitor.challenger_losses) == ([], None, [])
    monitor.detector = _ScriptedDetector("w")
    assert monitor.update({"a": 1.0}, True, 0.0) == WARNING  # no longer in a zone, nor collecting
    assert list(monitor.buffer) == []


def test_a_restore_keeps_the_same_detector_with_what_it_saw_and_starts_another_afresh():
    monitor = DriftMonitor.create(DriftConfig(buffer_size=10), "binary")
    for _ in range(50):
        monitor.update({"a": 1.0}, True, 0.0)
    monitor.buffer.extend([({"a": 1.0}, True, 0.0)] * 3)
    monitor.configure(DriftConfig(buffer_size=20))
    assert monitor.detector.width == 50 and list(monitor.buffer) == [({"a": 1.0}, True, 0.0)] * 3
    assert monitor.buffer.maxlen == 20
    monitor.configure(DriftConfig(detector={"drift.ADWIN": {"delta": 0.01}}))
    assert monitor.detector.width == 0 and monitor.detector.delta == 0.01
    monitor.configure(DriftConfig(detector="drift.PageHinkley"))
    assert type(monitor.detector).__name__ == "PageHinkley"
    with pytest.raises(ModelError, match="0/1 input"):  # checked against the task on a restore too
        DriftMonitor.create(DriftConfig(), "regression").configure(DriftConfig(detector="drift.binary.DDM"))


def test_a_regression_loss_without_a_prediction_is_the_label_itself():
    assert loss_of("regression", -3.0, None) == 3.0
    assert loss_of("regression", 5.0, 2.0) == 3.0


@pytest.mark.parametrize("policy", ["rollback", "reset", "best"])
def test_the_winner_is_returned_with_its_model_and_the_action_that_policy_takes(policy):
    monitor = DriftMonitor.create(DriftConfig(buffer_size=10), "regression")
    events = [({"a": float(n % 3)}, float(n % 3), 2.0) for n in range(6)]
    monitor.buffer.extend(events)
    snapshot = _Lookup()
    for x, y, _ in events[:2]:  # knows a=0 and a=1: misses a=2 twice, by 2
        snapshot.learn_one(x, y)
    fresh = _Lookup()  # learns the buffer as it goes: misses a=1 and a=2 once each, by 1 and 2
    decision, model = monitor.choose(policy, 9, _Lookup(), [("00000003-warning", lambda: snapshot)], fresh)
    expected = {"rollback": {"snapshot:00000003-warning": 0.666667}, "reset": {"fresh": 0.5}}.get(
        policy, {"current": 2.0, "snapshot:00000003-warning": 0.666667, "fresh": 0.5}
    )
    assert decision.candidates == expected  # mean losses, to six decimals
    if policy == "rollback":
        assert (decision.winner, decision.action, model) == (
            "snapshot:00000003-warning",
            "rollback",
            snapshot,
        )
    else:
        assert (decision.winner, decision.action, model) == ("fresh", "reset", fresh)
        assert fresh.seen == {((("a", float(n)),)): float(n) for n in range(3)}
    assert decision.as_dict() == {
        "event": 9, "policy": policy, "candidates": expected, "winner": decision.winner,
        "action": decision.action, "buffer_size": 6,
    }  # fmt: skip


def _deciding_engine(tmp_path, policy: str, **drift) -> Engine:
    config = Config.model_validate({
        "model": {"pipeline": ["tree.HoeffdingTreeClassifier"]},
        "drift": {"policy": policy, "buffer_size": 10, **drift},
    })  # fmt: skip
    return Engine(config, SnapshotStore(tmp_path, keep_last=100))


def _learn(engine: Engine, label: bool, count: int) -> None:
    for _ in range(count):
        engine.process(Event(x={"a": 1.0}, y=label))


def _drift_then_decide(engine: Engine, label: bool) -> _ScriptedDetector:
    """The detector signals a drift at the next event; the buffer then fills with ``label``."""
    detector = engine.state.monitor.detector = _ScriptedDetector("D")
    _learn(engine, label, 11)
    return detector


def test_policy_rollback_switches_to_the_best_of_the_last_candidate_snapshots(tmp_path, caplog):
    engine = _deciding_engine(tmp_path, "rollback", candidates=2)
    _learn(engine, True, 20)
    engine.snapshot("manual")  # a model of "True": the best, but no longer among the last two
    _learn(engine, False, 30)
    second = engine.snapshot("manual")
    caplog.set_level(logging.INFO, logger="stream.prequential")
    _drift_then_decide(engine, True)  # the drift takes a third snapshot
    third = engine.store.list(reason="drift")[0]
    scores = {f"snapshot:{second.id}": 1.0, f"snapshot:{third.id}": 1.0}
    assert engine.state.decisions == [{
        "event": 61, "policy": "rollback", "candidates": scores, "winner": f"snapshot:{second.id}",
        "action": "rollback", "buffer_size": 10,
    }]  # fmt: skip
    assert f"drift decision at event 61: snapshot:{second.id} ({scores})" in caplog.messages
    assert (engine.state.rollbacks, engine.state.resets, engine.state.model_version) == (1, 0, 2)
    [rollback] = engine.store.list(reason="rollback")
    assert (rollback.note, rollback.events_seen) == (f"policy rollback to snapshot:{second.id}", 61)
    assert engine.state.monitor.detector.updates == 0  # the new model's own detector
    _drift_then_decide(engine, True)
    assert (engine.state.rollbacks, engine.state.model_version) == (2, 3)


def test_a_restored_state_keeps_its_candidate_snapshots(tmp_path):
    engine = _deciding_engine(tmp_path, "rollback")
    _learn(engine, True, 20)
    first = engine.snapshot("manual")
    restored = Engine(engine.config, engine.store, state=engine.store.load(first.id))
    _drift_then_decide(restored, True)
    drift = restored.store.list(reason="drift")[0]
    assert restored.state.decisions[0]["candidates"] == {
        f"snapshot:{first.id}": 0.0,
        f"snapshot:{drift.id}": 0.0,
    }


def test_policy_reset_switches_to_the_fresh_model_without_a_snapshot(tmp_path):
    engine = _deciding_engine(tmp_path, "reset")
    _learn(engine, True, 20)
    _drift_then_decide(engine, False)
    assert [(d["winner"], d["action"]) for d in engine.state.decisions] == [("fresh", "reset")]
    assert (engine.state.rollbacks, engine.state.resets, engine.state.model_version) == (0, 1, 2)
    assert engine.store.list(reason="rollback") == []
    assert engine.predict(Event(x={"a": 1.0}))["y_pred"] is False  # trained on the buffer alone
    assert engine.state.monitor.detector.updates == 0


def test_when_the_current_model_wins_it_stays_with_its_detector(tmp_path):
    engine = _deciding_engine(tmp_path, "best")
    _learn(engine, True, 20)
    detector = _drift_then_decide(engine, True)
    [decision] = engine.state.decisions
    assert (decision["winner"], decision["action"], decision["candidates"]["current"]) == (
        "current",
        "keep",
        0.0,
    )
    assert (engine.state.rollbacks, engine.state.resets, engine.state.model_version) == (0, 0, 1)
    # The same detector, going on (the drift's snapshot made the engine go on with a copy of its state).
    kept = engine.state.monitor.detector
    assert (type(kept), kept.script, kept.updates) == (_ScriptedDetector, detector.script, 11)
    assert not engine.state.monitor.buffer and not engine.state.monitor.deciding


@pytest.mark.parametrize("policy", ["none", "snapshot"])
def test_policies_none_and_snapshot_decide_nothing_and_keep_the_detector(tmp_path, policy):
    engine = _deciding_engine(tmp_path, policy)
    _learn(engine, True, 20)
    detector = _drift_then_decide(engine, False)
    assert engine.state.decisions == [] and engine.state.model_version == 1
    kept = engine.state.monitor.detector  # the same detector, going on (a copy after a snapshot)
    assert (type(kept), kept.script, kept.updates) == (_ScriptedDetector, detector.script, 11)
    assert not engine.state.monitor.buffer
    assert len(engine.store.list(reason="drift")) == (policy == "snapshot")


@pytest.mark.parametrize(
    ("policy", "challenger", "snapshots", "challenged"),
    [
        ("best", True, True, True),
        ("best", False, True, False),
        ("reset", True, True, False),
        ("none", True, False, False),
    ],
)
def test_a_warning_is_counted_and_snapshotted_and_under_policy_best_starts_a_challenger(
    tmp_path, caplog, policy, challenger, snapshots, challenged
):
    engine = _deciding_engine(tmp_path, policy, challenger=challenger)
    _learn(engine, True, 20)
    caplog.set_level(logging.INFO, logger="stream.prequential")
    engine.state.monitor.detector = _ScriptedDetector("w")
    _learn(engine, True, 1)
    assert (engine.state.warnings, engine.state.drifts) == (1, 0)
    assert "warning at event 21" in caplog.messages
    assert [m.events_seen for m in engine.store.list(reason="warning")] == ([21] if snapshots else [])
    assert engine.state.recent_snapshots == deque([m.id for m in engine.store.list(reason="warning")])
    monitor = engine.state.monitor
    if challenged:  # a new model, trained from the warning on
        assert type(monitor.challenger).__name__ == "HoeffdingTreeClassifier"
        assert monitor.challenger.predict_proba_one({"a": 1.0}) == {}  # it knows nothing yet
    else:
        assert monitor.challenger is None


@pytest.mark.parametrize("policy", ["none", "snapshot"])
def test_a_drift_is_counted_and_logged_and_snapshotted_unless_the_policy_is_none(tmp_path, caplog, policy):
    engine = _deciding_engine(tmp_path, policy)
    _learn(engine, True, 20)
    caplog.set_level(logging.INFO, logger="stream.prequential")
    engine.state.monitor.detector = _ScriptedDetector("D")
    _learn(engine, True, 1)
    assert (engine.state.warnings, engine.state.drifts) == (0, 1)
    assert f"drift at event 21 (policy {policy})" in caplog.messages
    drifts = engine.store.list(reason="drift")
    assert [m.events_seen for m in drifts] == ([21] if policy == "snapshot" else [])
    assert engine.state.snapshots == len(drifts)
