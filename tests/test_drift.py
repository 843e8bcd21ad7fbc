from __future__ import annotations

import tempfile

import pytest

from stream.config import Config, DriftConfig
from stream.datasets import as_event, recurring_concepts
from stream.drift import DECIDE, DRIFT, NO_SIGNAL, Decision, DriftMonitor
from stream.errors import ModelError
from stream.events import validate_event
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
