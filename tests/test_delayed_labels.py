"""Delayed labels without Kafka: the join (stream/join.py) through the per-record step, as
``stream replay`` runs it; and replay agrees with River's delayed progressive validation."""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import tempfile
from pathlib import Path

import pytest
from river import datasets, evaluate, metrics, stream

from stream.config import Config
from stream.events import Event
from stream.join import Join
from stream.models import build_model
from stream.prequential import Engine
from stream.replay import Record, replay_file, run_replay, with_inline_labels
from stream.snapshots import SnapshotStore

LINEAR = ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]


def _config(task: str = "binary", pipeline: list | None = None, metric: str = "Accuracy", **labels) -> Config:
    return Config.model_validate(
        {
            "model": {"task": task, "pipeline": pipeline or LINEAR},
            "metrics": {"names": [metric]},
            "drift": {"policy": "none"},
            "labels": labels,
            "snapshots": {"directory": tempfile.mkdtemp(prefix="delayed-snapshots-")},
        }
    )


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _replay_inline(config: Config, records: list[dict]):
    engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="delayed-")))
    join = Join(config.labels)
    predictions, dead_letters = io.StringIO(), io.StringIO()
    lines = [(n, json.dumps(record).encode()) for n, record in enumerate(records, 1)]
    summary = run_replay(with_inline_labels(lines), engine, predictions, dead_letters, join=join)
    decoded = [[json.loads(line) for line in f.getvalue().splitlines()] for f in (predictions, dead_letters)]
    return summary, decoded[0], decoded[1], engine


@pytest.mark.parametrize(
    ("dataset", "task", "pipeline", "metric", "river_metric"),
    [
        (datasets.Phishing, "binary", LINEAR, "Accuracy", metrics.Accuracy),
        (
            datasets.TrumpApproval,
            "regression",
            ["preprocessing.StandardScaler", "linear_model.LinearRegression"],
            "MAE",
            metrics.MAE,
        ),
    ],
)
@pytest.mark.parametrize("delay", [1, 30])
def test_replay_with_an_integer_delay_equals_rivers_delayed_progressive_validation(
    dataset, task, pipeline, metric, river_metric, delay
):
    config = _config(task, pipeline, metric)
    expected = evaluate.progressive_val_score(
        dataset(), build_model(config.model), river_metric(), delay=delay
    ).get()
    # The same questions and answers, in the order River asks and answers them, as one file.
    records = [
        {"id": str(i), "x": x} if y is None else {"id": str(i), "y": y}
        for i, x, y in stream.simulate_qa(dataset(), moment=None, delay=delay)
    ]
    summary, predictions, dead_letters, _ = _replay_inline(config, records)
    assert dead_letters == []
    assert summary.metrics[metric] == expected  # to the last digit
    assert summary.labels.joined == len(predictions) == dataset().n_samples
    assert summary.labels.waiting == summary.labels.held == 0


def test_replay_with_a_time_delay_equals_rivers_delayed_progressive_validation(tmp_path):
    rng = random.Random(7)
    clock, events, labels, data = 1_700_000_000, [], [], []
    for i, (x, y) in enumerate(datasets.Phishing()):
        clock += rng.randint(1, 60)  # whole seconds: labels often come at an event's very moment
        x = {**x, "t": clock}
        data.append((x, y))
        events.append({"id": str(i), "x": x, "ts": clock})
        labels.append({"id": str(i), "y": y, "ts": clock + 45})
    config = _config()
    expected = evaluate.progressive_val_score(
        data,
        build_model(config.model),
        metrics.Accuracy(),
        moment=lambda x: dt.datetime.fromtimestamp(x["t"], dt.UTC),
        delay=dt.timedelta(seconds=45),
    ).get()
    summary = replay_file(
        _write_jsonl(tmp_path / "events.jsonl", events),
        config,
        labels=_write_jsonl(tmp_path / "labels.jsonl", labels),
    )
    assert summary.metrics["Accuracy"] == expected
    assert summary.labels.joined == len(events)
    assert summary.labels.mean_label_delay_seconds == summary.labels.max_label_delay_seconds == 45


def test_a_label_before_its_event_is_held_and_the_event_learned_at_once():
    summary, predictions, dead_letters, engine = _replay_inline(
        _config(),
        [{"id": "a", "y": True}, {"id": "a", "x": {"f": 1.0}}, {"id": "b", "x": {"f": 2.0}}],
    )
    assert [(p["id"], p.get("y")) for p in predictions] == [("a", True), ("b", None)]
    assert summary.labels.joined == 1 and summary.labels.waiting == 1 and dead_letters == []
    assert engine.state.labelled == 1


def test_a_joined_label_is_scored_with_the_prediction_made_when_its_event_came():
    records = [{"id": f"w{n}", "x": {"f": 1.0}, "y": False} for n in range(50)]
    records += [{"id": "late", "x": {"f": 1.0}}]  # predicted False now
    records += [{"id": f"v{n}", "x": {"f": 1.0}, "y": True} for n in range(150)]  # now it says True
    records += [{"id": "late", "y": True}]
    summary, predictions, _, engine = _replay_inline(_config(), records)
    late = next(p for p in predictions if p["id"] == "late")
    assert late["y_pred"] is False and engine.predict(Event(x={"f": 1.0}))["y_pred"] is True
    hits = sum(p["y_pred"] == p["y"] for p in predictions if "y" in p) + (late["y_pred"] is True)
    assert summary.metrics["Accuracy"] == hits / 201  # the miss at event time counts, not a new hit


def test_duplicate_labels_are_learned_once_and_counted():
    summary, _, dead_letters, engine = _replay_inline(
        _config(),
        [
            {"id": "a", "x": {"f": 1.0}},
            {"id": "a", "y": True},
            {"id": "a", "y": False},
            {"id": "a", "y": True},
        ],
    )
    assert engine.state.labelled == 1
    assert summary.labels.joined == 1 and summary.labels.duplicates == 2 and dead_letters == []


def test_a_label_for_an_unknown_id_is_a_dead_letter_with_the_reason():
    summary, _, dead_letters, _ = _replay_inline(
        _config(max_wait_events=3),
        [{"id": "ghost", "y": True}, *({"id": str(n), "x": {"f": 1.0}, "y": True} for n in range(5))],
    )
    assert [letter["source"]["position"] for letter in dead_letters] == [1]
    assert "no event with id 'ghost' came within" in dead_letters[0]["error"]
    assert "labels.max_wait_events=3" in dead_letters[0]["error"]
    assert summary.labels.orphans == 1


def test_an_event_whose_label_is_too_late_expires_unlearned_and_the_label_is_a_dead_letter():
    records = [{"id": "slow", "x": {"f": 1.0}, "ts": 0}]
    records += [{"id": str(n), "x": {"f": 1.0}, "y": True, "ts": 10 * n} for n in range(1, 5)]
    records += [{"id": "slow", "y": True, "ts": 45}]
    summary, _, dead_letters, engine = _replay_inline(_config(max_wait_seconds=25), records)
    assert summary.labels.expired == 1 and summary.labels.joined == 0
    assert engine.state.labelled == 4  # the four that carried their labels; not "slow"
    assert dead_letters[0]["error"] == "the event 'slow' expired unlearned before its label came"


def test_at_most_max_pending_events_wait_and_the_oldest_is_evicted():
    records = [{"id": str(n), "x": {"f": float(n)}} for n in range(5)]
    records += [{"id": "0", "y": True}, {"id": "4", "y": True}]
    summary, _, dead_letters, _ = _replay_inline(_config(max_pending=3), records)
    assert summary.labels.evicted == 2 and summary.labels.joined == 1 and summary.labels.waiting == 2
    assert "'0' expired unlearned" in dead_letters[0]["error"]


def test_every_event_and_every_label_ends_in_exactly_one_counted_outcome():
    rng = random.Random(3)
    records: list[dict] = []
    for n in range(400):
        if rng.random() < 0.3:
            records.append({"id": f"e{n}", "x": {"f": rng.random()}, "y": rng.random() < 0.5})
        else:
            records.append({"id": f"e{n}", "x": {"f": rng.random()}})
        if rng.random() < 0.6:
            records.append({"id": f"e{rng.randrange(n + 5)}", "y": rng.random() < 0.5})
        if rng.random() < 0.05:
            records.append({"id": f"e{n}", "y": "not a boolean"})
    summary, predictions, dead_letters, engine = _replay_inline(
        _config(max_wait_events=20, max_pending=30, max_held=10), records
    )
    labels = sum(1 for record in records if "x" not in record)
    events = len(records) - labels
    joined = summary.labels
    assert len(predictions) == events  # every event predicted (none was invalid)
    inline = engine.state.labelled - joined.joined
    assert (
        events == inline + joined.joined + joined.expired + joined.evicted + joined.waiting + joined.refused
    )
    assert labels == (
        joined.joined + joined.duplicates + joined.orphans + joined.invalid_labels + joined.held
    )
    assert len(dead_letters) == joined.orphans + joined.invalid_labels + joined.refused


def test_replay_merges_a_labels_file_by_ts_a_label_first_at_equal_ts():
    events = [(1, b'{"id": "a", "x": {"f": 1.0}, "ts": 10}'), (2, b'{"id": "b", "x": {"f": 1.0}, "ts": 20}')]
    labels = [(1, b'{"id": "a", "y": true, "ts": 20}')]
    from stream.replay import with_labels_file

    order = [(record.is_label, record.clock) for record in with_labels_file(events, labels)]
    assert order == [(False, 10.0), (True, 20.0), (False, 20.0)]
    assert isinstance(next(iter(with_labels_file(events, labels))), Record)


def test_what_the_join_keeps_stays_bounded_by_what_waits_not_by_what_passed():
    join = Join(_config().labels)  # the default time bound: a week, far longer than this stream
    for n in range(20_000):
        assert join.event_came(str(n), now=float(n)) is None
        join.wait(str(n), {"f": 1.0}, {"y_pred": True}, now=float(n))
        assert join.label_came(str(n), True, now=float(n)) is not None
        join.joined(str(n), float(n), float(n), float(n))
    assert join.waiting == 0
    # The arrival orders do not keep one entry per event that ever came.
    assert len(join._waiting_order) <= 1025 and len(join._recent_order) <= 2 * len(join._recent) + 1025


def test_a_join_restored_from_its_changes_goes_on_as_the_original():
    rng = random.Random(11)
    config = _config(max_wait_seconds=50, max_pending=40, max_held=15).labels
    original, log = Join(config, track_changes=True), []

    def run(join: Join, steps: range) -> list:
        outcomes = []
        for step in steps:
            now = float(step)
            event_id = f"e{rng.randrange(step + 10)}"
            if rng.random() < 0.5:
                held = join.event_came(event_id, now)
                if held is not None:
                    join.joined(event_id, now, now, held.since)
                elif not join.is_waiting(event_id):
                    join.wait(event_id, {"f": now}, {"y_pred": True}, now)
                outcomes.append(("event", event_id, held))
            else:
                waiting = join.label_came(event_id, True, now, origin=step)
                if waiting is not None:
                    join.joined(event_id, now, waiting.since, now)
                outcomes.append(("label", event_id, waiting))
            if rng.random() < 0.1:
                log.extend(join.take_changes())
        return outcomes

    run(original, range(300))
    log.extend(original.take_changes())
    restored = Join(config, track_changes=True)
    restored.restore(log)
    assert restored.summary() == original.summary() and restored.events_seen == original.events_seen
    rng.seed(12)
    after_original = run(original, range(300, 500))
    rng.seed(12)
    after_restored = run(restored, range(300, 500))
    assert after_restored == after_original and restored.summary() == original.summary()


@pytest.mark.benchmark
def test_the_labels_benchmark_measures_the_join_and_a_checkpoint_beside_it():
    import subprocess
    import sys

    from tests import REPO_ROOT

    command = [sys.executable, "-m", "benchmarks.labels", "--pending", "30000", "--labels", "20000"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "waiting: 30000 events" in result.stdout and "checkpoint:" in result.stdout
    assert "labels joined and learned" in result.stdout and "us a label" in result.stdout


def test_label_times_no_clock_gives_are_ignored_not_a_crash():
    records = [{"id": "a", "x": {"f": 1.0}}, {"id": "a", "y": True, "ts": 1e308}]
    records += [{"id": "b", "x": {"f": 2.0}}, {"id": "b", "y": False, "ts": 10**400}]
    summary, _, dead_letters, _ = _replay_inline(_config(), records)
    assert dead_letters == [] and summary.labels.joined == 2
    assert (
        summary.labels.max_label_delay_seconds is not None and summary.labels.max_label_delay_seconds < 1e13
    )


def test_a_label_for_an_event_the_model_refused_to_learn_with_its_label_is_an_orphan_saying_so():
    config = _config("multiclass", ["tree.HoeffdingTreeClassifier"])
    records = [{"id": "a", "x": {"f": 1.0}, "y": "cat"}, {"id": "b", "x": {"f": 2.0}}, {"id": "b", "y": 7}]
    records += [{"id": "b", "y": "dog"}]
    summary, _, dead_letters, _ = _replay_inline(config, records)
    assert summary.labels.refused == 1 and summary.labels.orphans == 1
    assert "this model's labels are of type str" in dead_letters[0]["error"]
    assert dead_letters[1]["error"] == "the model refused to learn the event 'b' with its label"


def test_delayed_labels_need_exactly_once_and_a_supervised_task():
    from stream.errors import ConfigError
    from stream.models import check_config

    for bad, key in (
        ({"service": {"guarantee": "at_least_once"}}, "exactly_once"),
        ({"model": {"task": "anomaly", "pipeline": ["anomaly.HalfSpaceTrees"]}}, "supervised"),
    ):
        config = Config.model_validate(
            {"kafka": {"label_topic": "labels"}, "snapshots": {"directory": tempfile.mkdtemp()}, **bad}
        )
        with pytest.raises(ConfigError, match=f"^kafka.label_topic: .*{key}"):
            check_config(config)


@pytest.mark.parametrize("joined", [False, True], ids=["inline-label", "joined-label"])
def test_an_example_the_model_refused_is_refused_again_when_relearned_and_says_so(caplog, joined: bool):
    """A restore learns the examples written since its checkpoint again (stream/changelog.py);
    one the model refused when it came is refused again, leaves no trace but its number, and is
    logged at DEBUG: its dead letter was written the first time."""
    config = _config("multiclass", ["tree.HoeffdingTreeClassifier"])
    engine = Engine(config, SnapshotStore(tempfile.mkdtemp(prefix="relearn-")))
    caplog.set_level("DEBUG", logger="stream.prequential")
    engine.relearn_example(1, Event(x={"f": 1.0}, y="cat", id="a"), None)
    engine.relearn_example(2, Event(x={"f": 2.0}, y="dog", id="b"), None)
    prediction = {"id": "c", "y_pred": "cat", "y_proba": {"cat": 0.5, "dog": 0.5}} if joined else None
    engine.relearn_example(3, Event(x={"f": 1.0}, y=7, id="c"), prediction)
    assert engine.state.examples_learned == 3 and engine.state.labelled == 2
    logged = [r.getMessage() for r in caplog.records if r.name == "stream.prequential"]
    assert logged == ["example 3 is refused again: label 7 is a int; this model's labels are of type str"]
