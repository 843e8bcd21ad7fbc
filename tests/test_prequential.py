from __future__ import annotations

import io
import json
import statistics

import pytest
from river import anomaly, base, datasets, evaluate, linear_model, metrics, preprocessing, tree

from stream.config import Config
from stream.errors import InvalidEvent, ModelError
from stream.events import Event, encode_record, validate_event
from stream.prequential import MAX_HISTORY_KEPT, Engine
from stream.replay import run_replay
from stream.snapshots import SnapshotStore
from tests.model_equality import canonical_pickle


def _config(task: str, pipeline: list, metric: str, **sections) -> Config:
    return Config.model_validate(
        {"model": {"task": task, "pipeline": pipeline}, "metrics": {"names": [metric]}, **sections}
    )


def _as_jsonl(dataset) -> bytes:
    return b"".join(json.dumps({"x": x, "y": y}).encode() + b"\n" for x, y in dataset)


def _replay_metric(config: Config, data: bytes, tmp_path) -> float:
    engine = Engine(config, SnapshotStore(tmp_path / "snapshots"))
    records = ((n, line) for n, line in enumerate(data.splitlines(), start=1))
    summary = run_replay(records, engine)
    return summary.metrics[config.metrics.names[0]]


@pytest.mark.parametrize(
    ("task", "pipeline", "river_model", "metric", "dataset"),
    [
        (
            "binary",
            ["preprocessing.StandardScaler", "linear_model.LogisticRegression"],
            lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
            "Accuracy",
            datasets.Phishing,
        ),
        (
            "binary",
            ["tree.HoeffdingTreeClassifier"],
            tree.HoeffdingTreeClassifier,
            "ROCAUC",
            datasets.Phishing,
        ),
        (
            "regression",
            ["preprocessing.StandardScaler", "linear_model.LinearRegression"],
            lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
            "MAE",
            datasets.TrumpApproval,
        ),
        (
            "multiclass",
            ["tree.HoeffdingTreeClassifier"],
            tree.HoeffdingTreeClassifier,
            "MacroF1",
            datasets.ImageSegments,
        ),
        (
            "anomaly",
            [{"anomaly.HalfSpaceTrees": {"seed": 42}}],
            lambda: anomaly.HalfSpaceTrees(seed=42),
            "ROCAUC",
            datasets.Phishing,
        ),
    ],
    ids=["logistic-accuracy", "tree-rocauc", "linear-mae", "tree-multiclass-macrof1", "halfspace-rocauc"],
)
def test_replay_agrees_with_river_progressive_val_score_to_the_last_digit(
    task, pipeline, river_model, metric, dataset, tmp_path
):
    expected = evaluate.progressive_val_score(dataset(), river_model(), getattr(metrics, metric)()).get()
    config = _config(task, pipeline, metric, drift={"policy": "none"})
    assert _replay_metric(config, _as_jsonl(dataset()), tmp_path) == expected


def _drifting_jsonl(n_per_concept: int = 1500) -> bytes:
    from stream.datasets import as_event, recurring_concepts

    lines = [json.dumps(as_event(r)) for r in recurring_concepts(n_per_concept, (0, 2, 0))]
    lines.insert(100, "not json")
    lines.insert(200, json.dumps({"x": {"a": None}}))
    lines.insert(300, json.dumps({"x": {"a": 1.0}}))  # no label: predict only
    return ("\n".join(lines) + "\n").encode()


def _replay_bytes(data: bytes, config: Config, store_dir) -> tuple[bytes, dict]:
    engine = Engine(config, SnapshotStore(store_dir))
    out = io.StringIO()
    summary = run_replay(((n, line) for n, line in enumerate(data.splitlines(), 1)), engine, out)
    return out.getvalue().encode(), summary


def test_same_input_and_config_give_byte_identical_predictions(tmp_path):
    config = _config("binary", ["tree.HoeffdingTreeClassifier"], "Accuracy")
    data = _drifting_jsonl()
    first, summary = _replay_bytes(data, config, tmp_path / "a")
    second, _ = _replay_bytes(data, config, tmp_path / "b")
    assert first == second
    assert summary.drifts >= 1  # the run exercised the drift policy, not just the model


def test_bad_records_are_counted_and_do_not_stop_the_loop(tmp_path):
    config = _config("binary", ["tree.HoeffdingTreeClassifier"], "Accuracy")
    dead = io.StringIO()
    engine = Engine(config, SnapshotStore(tmp_path))
    data = _drifting_jsonl(500)
    summary = run_replay(enumerate(data.splitlines(), 1), engine, None, dead)
    assert summary.errors == 2
    assert summary.events == 1501 and summary.labelled == 1500
    reasons = [json.loads(line)["error"] for line in dead.getvalue().splitlines()]
    assert reasons[0].startswith("malformed JSON") and "feature 'a'" in reasons[1]


def test_a_prediction_is_made_before_the_event_is_learned(tmp_path):
    engine = Engine(_config("binary", ["tree.HoeffdingTreeClassifier"], "Accuracy"), SnapshotStore(tmp_path))
    first = engine.process(Event(x={"a": 1.0}, y=True, id="1"))
    assert first["y_pred"] is None and first["y_proba"] == {}  # nothing learned yet
    assert first["y"] is True
    assert engine.process(Event(x={"a": 1.0}, id="2"))["y_pred"] is True


def test_restoring_a_snapshot_mid_stream_continues_exactly_like_an_uninterrupted_run(tmp_path):
    config = _config("binary", ["tree.HoeffdingTreeClassifier"], "Accuracy")
    events = [validate_event(json.loads(line), "binary") for line in _drifting_jsonl().splitlines()[400:]]
    uninterrupted = Engine(config, SnapshotStore(tmp_path / "a"))
    expected = [encode_record(uninterrupted.process(e)) for e in events]

    store = SnapshotStore(tmp_path / "b")
    first_half = Engine(config, store)
    got = [encode_record(first_half.process(e)) for e in events[:1700]]
    manifest = first_half.snapshot("checkpoint")
    resumed = Engine(config, store, state=store.load(manifest.id))
    got += [encode_record(resumed.process(e)) for e in events[1700:]]
    assert got == expected
    assert canonical_pickle(resumed.state.model) == canonical_pickle(uninterrupted.state.model)


def test_periodic_snapshots_follow_the_config(tmp_path):
    config = _config(
        "binary",
        ["tree.HoeffdingTreeClassifier"],
        "Accuracy",
        snapshots={"every_events": 100},
        drift={"policy": "none"},
    )
    engine = Engine(config, SnapshotStore(tmp_path, keep_last=3))
    for i in range(450):
        engine.process(Event(x={"a": float(i % 7)}, y=i % 2 == 0, id=str(i)))
    periodic = engine.store.list(reason="periodic")
    assert [m.events_seen for m in periodic] == [200, 300, 400]  # keep_last=3 pruned the first
    assert engine.state.snapshots == 4


def test_the_metric_history_keeps_only_its_newest_points(tmp_path):
    config = Config.model_validate({"metrics": {"history_every": 1}, "drift": {"policy": "none"}})
    engine = Engine(config, SnapshotStore(tmp_path))
    events = MAX_HISTORY_KEPT + 5
    for i in range(events):
        engine.process(Event(x={"a": float(i % 7)}, y=i % 2 == 0, id=str(i)))
    assert [point["event"] for point in engine.state.history] == list(range(6, events + 1))
    assert engine.summary().history == engine.state.history


def test_manual_rollback_restores_the_snapshot_model_and_bumps_the_version(tmp_path):
    config = _config("binary", ["tree.HoeffdingTreeClassifier"], "Accuracy", drift={"policy": "none"})
    engine = Engine(config, SnapshotStore(tmp_path))
    for _ in range(50):
        engine.process(Event(x={"a": 1.0}, y=True))
    saved = engine.snapshot("manual")
    for _ in range(500):
        engine.process(Event(x={"a": 1.0}, y=False))
    assert engine.predict(Event(x={"a": 1.0}))["y_pred"] is False
    engine.rollback(saved.id)
    prediction = engine.predict(Event(x={"a": 1.0}))
    assert prediction["y_pred"] is True and prediction["model_version"] == 2
    assert engine.state.rollbacks == 1
    assert engine.store.list(reason="rollback")[0].note == f"manual rollback to {saved.id}"
    engine.rollback(saved.id)
    assert engine.state.rollbacks == 2 and engine.predict(Event(x={"a": 1.0}))["model_version"] == 3


class Contrarian(base.Classifier):
    """Its label is its own (``a`` positive), not the more probable class, which it gives first."""

    def learn_one(self, x: dict, y: bool) -> None:
        pass

    def predict_proba_one(self, x: dict) -> dict[bool, float]:
        return {False: 0.2, True: 0.8}

    def predict_one(self, x: dict) -> bool:
        return x["a"] > 0


def contrarian() -> Contrarian:
    return Contrarian()


def test_a_classifier_with_its_own_predict_one_is_asked_for_its_label(tmp_path):
    """Not the argmax of its probabilities; and with as many classes as y_proba may hold, those
    stay in the model's order."""
    config = Config.model_validate({
        "model": {"task": "binary", "factory": "tests.test_prequential:contrarian"},
        "limits": {"max_proba_classes": 2},
    })  # fmt: skip
    engine = Engine(config, SnapshotStore(tmp_path))
    record = engine.process(Event(x={"a": -1.0}, y=True))
    assert record["y_pred"] is False and list(record["y_proba"].items()) == [(False, 0.2), (True, 0.8)]
    assert engine.predict(Event(x={"a": 1.0}))["y_pred"] is True


class NaNScorer(base.AnomalyDetector):
    """An anomaly detector whose score is not a number."""

    def learn_one(self, x: dict) -> None:
        pass

    def score_one(self, x: dict) -> float:
        return float("nan")


def nan_scorer() -> NaNScorer:
    return NaNScorer()


def test_an_anomaly_score_that_is_not_finite_is_refused_and_leaves_no_trace(tmp_path):
    config = Config.model_validate({"model": {"task": "anomaly", "factory": f"{__name__}:nan_scorer"}})
    engine = Engine(config, SnapshotStore(tmp_path))
    refused = r"^the model cannot predict this event: ValueError: non-finite output nan$"
    with pytest.raises(InvalidEvent, match=refused):
        engine.process(Event(x={"a": 1.0}))
    assert engine.state.events == 0


def test_a_regressor_s_drift_detector_watches_its_absolute_error(tmp_path):
    config = _config("regression", ["linear_model.LinearRegression"], "MAE", drift={"policy": "none"})
    engine = Engine(config, SnapshotStore(tmp_path))
    errors = []
    for n in range(30):
        event = Event(x={"a": float(n % 4)}, y=3.0 * (n % 4) + 1.0)
        errors.append(abs(event.y - engine.process(event)["y_pred"]))
    assert engine.state.monitor.detector.estimation == pytest.approx(statistics.fmean(errors))
    assert max(errors) > 1  # the absolute error, not the 0/1 error of a classifier


def test_each_snapshot_names_its_parent_and_records_what_its_state_had_learned(tmp_path):
    config = _config("binary", ["tree.HoeffdingTreeClassifier"], "Accuracy", drift={"policy": "none"})
    store = SnapshotStore(tmp_path)
    engine = Engine(config, store)
    first = engine.snapshot("manual")
    for seq in range(1, 6):  # delayed labels: examples learned again, in their order
        engine.relearn_example(seq, Event(x={"a": float(seq)}, y=seq % 2 == 0), None)
    for n in range(30):
        engine.process(Event(x={"a": n % 5 / 5}, y=n % 3 == 0))
    engine.rollback(first.id)
    for n in range(10):
        engine.process(Event(x={"a": n % 5 / 5}, y=n % 2 == 0))
    last = engine.snapshot("checkpoint")
    history = store.list()
    assert [m.id for m in history] == ["00000001-manual", "00000002-rollback", "00000003-checkpoint"]
    assert [m.parent for m in history] == [None, "00000001-manual", "00000002-rollback"]
    state = engine.state
    assert (last.events_seen, last.labelled_seen, last.model_version, last.examples_learned) == (
        state.events,
        state.labelled,
        state.model_version,
        state.examples_learned,
    )
    assert (state.labelled, state.model_version, state.examples_learned) == (45, 2, 5)
    assert last.metrics == state.metrics.values() and 0 < last.metrics["Accuracy"] < 1


@pytest.mark.parametrize("task", ["binary", "anomaly"])
def test_a_model_switch_gives_the_new_model_a_fresh_detector_and_an_empty_buffer(tmp_path, task):
    pipeline = ["anomaly.HalfSpaceTrees"] if task == "anomaly" else ["tree.HoeffdingTreeClassifier"]
    engine = Engine(
        _config(task, pipeline, "ROCAUC" if task == "anomaly" else "Accuracy"), SnapshotStore(tmp_path)
    )
    saved = engine.snapshot("manual")
    for n in range(300):
        engine.process(Event(x={"a": n % 7 / 7}, y=n % 3 == 0))
    monitor = engine.state.monitor
    if task != "anomaly":  # anomaly detectors have no per-event loss: nothing is watched
        assert monitor.detector.width > 0
    engine.rollback(saved.id)
    assert engine.state.model_version == 2
    if task != "anomaly":
        assert engine.state.monitor.detector.width == 0 and not engine.state.monitor.buffer
    else:
        assert engine.state.monitor is None


def test_an_event_the_model_cannot_use_is_rejected_with_the_model_reason(tmp_path):
    config = _config(
        "binary", ["preprocessing.StandardScaler", "linear_model.LogisticRegression"], "Accuracy"
    )
    engine = Engine(config, SnapshotStore(tmp_path))
    dead = io.StringIO()
    records = [
        (1, b'{"x": {"a": 1.0}, "y": true}'),
        (2, b'{"x": {"a": "red"}, "y": true}'),
        (3, b'{"x": {"a": 2.0}, "y": false}'),
    ]
    summary = run_replay(records, engine, None, dead)
    assert summary.errors == 1 and summary.labelled == 2
    assert "the model cannot learn this event: TypeError" in dead.getvalue()


def test_every_snapshot_the_policy_takes_is_an_exact_restore_point(tmp_path):
    """Restoring any snapshot (warning, drift, rollback) and replaying the events it has not seen
    ends in the same model as the uninterrupted run: no event is learned twice or skipped."""
    config = _config(
        "binary", ["tree.HoeffdingTreeClassifier"], "Accuracy", drift={"detector": "drift.binary.DDM"}
    )
    events = [validate_event(json.loads(line), "binary") for line in _drifting_jsonl(1000).splitlines()[400:]]
    store = SnapshotStore(tmp_path, keep_last=1000)
    uninterrupted = Engine(config, store)
    for event in events:
        uninterrupted.process(event)
    manifests = store.list()
    assert {m.reason for m in manifests} >= {"warning", "drift"}
    for manifest in manifests:
        resumed = Engine(config, SnapshotStore(tmp_path / "scratch"), state=store.load(manifest.id))
        assert resumed.state.events == manifest.events_seen
        for event in events[manifest.events_seen :]:
            resumed.process(event)
        assert canonical_pickle(resumed.state.model) == canonical_pickle(uninterrupted.state.model), (
            manifest.id
        )


class _Diverged(linear_model.LinearRegression):
    """A regressor whose predictions blew up."""

    def predict_one(self, x):
        return float("inf")


def test_a_non_finite_prediction_is_refused_like_a_bad_event(tmp_path, monkeypatch):
    import sys
    import types

    module = types.ModuleType("diverged_models")
    module.make = lambda: _Diverged()
    monkeypatch.setitem(sys.modules, "diverged_models", module)
    config = Config.model_validate({"model": {"task": "regression", "factory": "diverged_models:make"}})
    engine = Engine(config, SnapshotStore(tmp_path))
    with pytest.raises(InvalidEvent, match="non-finite output inf"):
        engine.process(Event(x={"a": 1.0}, y=2.0))
    assert engine.state.events == 0


def test_a_failing_snapshot_write_is_not_mistaken_for_a_bad_event(tmp_path, monkeypatch):
    config = _config("binary", ["tree.HoeffdingTreeClassifier"], "Accuracy", snapshots={"every_events": 2})
    engine = Engine(config, SnapshotStore(tmp_path))
    engine.process(Event(x={"a": 1.0}, y=True))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine.store, "save_pickled", full_disk)
    with pytest.raises(OSError, match="No space left"):
        engine.process(Event(x={"a": 1.0}, y=True))


def test_a_joined_label_of_the_models_kind_is_learned_and_one_of_another_kind_refused(tmp_path):
    engine = Engine(
        _config("multiclass", ["tree.HoeffdingTreeClassifier"], "Accuracy"), SnapshotStore(tmp_path)
    )
    engine.process(Event(x={"a": 1.0}, y="red", id="1"))
    assert engine.process(Event(x={"a": 1.0}, id="unlabelled"))["y_pred"] == "red"  # no label: no kind
    answered = engine.answer(Event(x={"a": 2.0}, id="2"))
    engine.learn_joined(Event(x={"a": 2.0}, y="blue", id="2"), answered)
    assert engine.state.labelled == 2
    with pytest.raises(InvalidEvent, match="label 3 is a int; this model's labels are of type str"):
        engine.learn_joined(Event(x={"a": 3.0}, y=3, id="3"), answered)
    assert engine.state.labelled == 2


def test_a_rebuild_learns_a_joined_label_again_with_the_prediction_it_was_learned_with(tmp_path):
    """Undoing a refused event learns the others again; a joined label's prediction was made by an
    earlier state, so it is the kept one the metrics see again, not one the state makes now."""
    config = _config(
        "binary", ["preprocessing.StandardScaler", "linear_model.LogisticRegression"], "Accuracy"
    )
    engine = Engine(config, SnapshotStore(tmp_path))
    for n in range(20):
        engine.process(Event(x={"a": 1.0}, y=True, id=str(n)))
    early = {"id": "joined", "y_pred": False, "y_proba": {False: 0.6, True: 0.4}, "model_version": 1}
    engine.learn_joined(Event(x={"a": 1.0}, y=True, id="joined"), early)  # a miss, made long ago
    assert engine.predict(Event(x={"a": 1.0}))["y_pred"] is True  # what the state predicts now
    assert engine.summary().metrics["Accuracy"] == pytest.approx(19 / 21)  # the first and the joined
    with pytest.raises(InvalidEvent, match="cannot learn"):
        engine.process(Event(x={"a": "red"}, y=True, id="refused"))
    assert engine.summary().metrics["Accuracy"] == pytest.approx(19 / 21)


def test_a_new_engine_numbers_its_snapshots_after_those_in_the_store_and_reports_their_size(tmp_path):
    config = _config("binary", ["tree.HoeffdingTreeClassifier"], "Accuracy")
    first = Engine(config, SnapshotStore(tmp_path))
    assert first.last_snapshot_bytes == 0  # nothing written yet
    first.snapshot("manual")
    engine = Engine(config, SnapshotStore(tmp_path))
    manifest = engine.snapshot("manual")
    assert manifest.id == "00000002-manual"
    assert engine.last_snapshot_bytes == manifest.size_bytes > 0


def test_the_rolling_metric_covers_the_configured_window(tmp_path):
    config = _config(
        "binary",
        ["tree.HoeffdingTreeClassifier"],
        "Accuracy",
        metrics={"names": ["Accuracy"], "rolling_window": 2},
    )
    engine = Engine(config, SnapshotStore(tmp_path))
    for label in (True, True, True, True, False):  # predicted: nothing yet, then True
        engine.process(Event(x={"a": 1.0}, y=label))
    assert engine.summary().metrics == {"Accuracy": 0.75, "Accuracy (rolling 2)": 0.5}


def test_a_regression_engine_refuses_a_drift_detector_for_0_1_losses(tmp_path):
    config = Config.model_validate({
        "model": {"task": "regression", "pipeline": ["linear_model.LinearRegression"]},
        "drift": {"detector": "drift.binary.DDM"},
    })  # fmt: skip
    with pytest.raises(ModelError, match=r"drift\.binary\.DDM takes 0/1 input"):
        Engine(config, SnapshotStore(tmp_path))


def test_a_prediction_carries_the_events_key_when_it_has_one(tmp_path):
    engine = Engine(_config("binary", ["tree.HoeffdingTreeClassifier"], "Accuracy"), SnapshotStore(tmp_path))
    assert engine.predict(Event(x={"a": 1.0}, id="1", key="customer-7"))["key"] == "customer-7"
    assert "key" not in engine.predict(Event(x={"a": 1.0}, id="2"))
