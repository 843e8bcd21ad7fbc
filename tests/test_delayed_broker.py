"""Delayed labels on the real broker, both backends: ``kafka.label_topic`` end to end.

The join's outcomes (label after its event, before it, twice, for no event, too late), the
co-partitioning check, and exactly once across five SIGKILLs: each event predicted once, each
label learned once, and per partition the final model equals a fresh one that learned the
partition's examples topic in its order (the order of learning, stream/changelog.py).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from connectors import BACKENDS
from kafka_local import LocalBroker
from stream.changelog import decode_example
from stream.checkpoint import restore_point
from stream.config import Config
from stream.events import encode_record
from stream.prequential import Engine
from stream.snapshots import SnapshotStore
from tests.kafka_helpers import (
    ProgressWatcher,
    ServiceProcess,
    duplicates,
    publish,
    read_topic,
    service_config,
    wait_for_records,
    wait_until,
)
from tests.model_equality import canonical_pickle
from tests.test_delayed_service import delayed_stream

pytestmark = pytest.mark.kafka


def _config(kafka, tmp_path: Path, new_topic, backend: str, partitions: int = 2, **sections: Any) -> dict:
    input_topic = new_topic(partitions=partitions, prefix="events")
    label_topic = new_topic(partitions=partitions, prefix="labels")
    return service_config(
        kafka.bootstrap_servers,
        tmp_path,
        kafka={"backend": backend, "input_topic": input_topic, "label_topic": label_topic},
        **sections,
    )


def _keyed(bootstrap: str, topic: str, records: list[dict]) -> None:
    """Labels are keyed as their events: the same partition number of the co-partitioned topics."""
    publish(bootstrap, topic, [json.dumps(r).encode() for r in records], [r["id"].encode() for r in records])


def _examples(bootstrap: str, topic: str, partition: int) -> list[tuple[int, Any, Any]]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False, group_id=None
    )
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end = consumer.end_offsets([tp])[tp]
    records = []
    deadline = time.monotonic() + 60
    while consumer.position(tp) < end and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(decode_example(record.value) for record in batch)
    consumer.close()
    return records


def _check_the_learning_order(bootstrap: str, config: dict, events: list[dict], tmp_path: Path) -> None:
    """Each event predicted once, each example learned once; per partition, the final model and
    the predictions are those of a fresh model learning the partition's examples in order."""
    topics = config["kafka"]
    examples_topic = Config.model_validate(config).kafka.examples_topic
    predictions = read_topic(bootstrap, topics["predictions_topic"], len(events))
    assert duplicates([p["id"] for p in predictions]) == {}, "a read_committed reader saw a prediction twice"
    assert len(predictions) == len(events)
    published = {p["id"]: p for p in predictions}
    learned: list[str] = []
    for partition in range(2):
        examples = _examples(bootstrap, examples_topic, partition)
        assert [seq for seq, _, _ in examples] == list(range(1, len(examples) + 1))
        learned += [event.id for _, event, _ in examples]
        # A fresh model learning this partition's examples in order: the same model and predictions.
        reference = Engine(Config.model_validate(config), SnapshotStore(tmp_path / f"reference-{partition}"))
        for _, event, prediction in examples:
            if prediction is None:
                assert published[event.id] == json.loads(encode_record(reference.process(event)))
            else:
                assert published[event.id] == json.loads(encode_record(prediction))
                reference.learn_joined(event, prediction)
        scope = f"{topics['input_topic']}-{partition}"
        store = SnapshotStore.from_config(Config.model_validate(config).snapshots, scope)
        keys = {
            f"{topics['input_topic']}:{partition}": 10**12,
            f"{topics['label_topic']}:{partition}": 10**12,
        }
        manifest, state = restore_point(store, keys)
        assert manifest.reason == "shutdown"
        assert canonical_pickle(state.model) == canonical_pickle(reference.state.model)
        assert state.metrics.values() == reference.state.metrics.values()
    assert duplicates(learned) == {} and sorted(learned) == sorted(e["id"] for e in events)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_sigkill_at_five_points_with_delayed_labels_learns_each_label_once_and_keeps_the_model(
    kafka, tmp_path, new_topic, backend
):
    # No checkpoint but those after a restore and at shutdown: every restore after a kill has the
    # examples written since the last restore to learn again.
    service_options = {"checkpoint_every_events": 10**6, "checkpoint_every_seconds": 3600.0}
    config = _config(kafka, tmp_path, new_topic, backend, service=service_options)
    topics = config["kafka"]
    events, labels = delayed_stream(3_000, seed=9)
    _keyed(kafka.bootstrap_servers, topics["input_topic"], events)
    _keyed(kafka.bootstrap_servers, topics["label_topic"], labels)

    service = ServiceProcess(tmp_path, config).start()
    examples_topic = Config.model_validate(config).kafka.examples_topic
    # Once the service made the examples topic (a reader asking first would create it, wrongly).
    wait_until(lambda: "assignment: ['" in service.log(), 120, "the service never took its partitions")
    watcher = ProgressWatcher(kafka.bootstrap_servers, examples_topic)  # kill as examples are learned
    for number, point in enumerate(sorted(random.Random(20261201).sample(range(300, 2_700), 5))):
        if number:
            service.start()
        assert watcher.wait_for(point, timeout=120) >= point, service.log()
        service.kill()  # mid-batch, mid-transaction
    watcher.close()
    service.start()
    try:
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], len(events), 180, service.log)
        wait_for_records(kafka.bootstrap_servers, examples_topic, len(events), 180, service.log)
    finally:
        assert service.stop() == 0, service.log()

    _check_the_learning_order(kafka.bootstrap_servers, config, events, tmp_path)
    relearned = [int(n) for n in re.findall(r"re-learned (\d+) examples", service.log())]
    assert any(relearned), "no restore learned examples again: the kills missed what this test is about"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_labels_after_before_twice_for_no_event_and_too_late_each_end_as_said(
    kafka, tmp_path, new_topic, backend
):
    config = _config(kafka, tmp_path, new_topic, backend, partitions=1, labels={"max_wait_seconds": 6.0})
    topics = config["kafka"]
    bootstrap = kafka.bootstrap_servers
    service = ServiceProcess(tmp_path, config).start()
    try:
        api = httpx.Client(base_url=service.api_url(), timeout=10)
        # The join keeps stream time (produce times): publish once the service reads, so that the
        # labels below come within labels.max_wait_seconds of their events' produce times.
        wait_until(lambda: "assignment: ['" in service.log(), 60, "the service never took its partition")
        _keyed(
            bootstrap,
            topics["input_topic"],
            [{"id": "after", "x": {"a": 1.0}}, {"id": "late", "x": {"a": 2.0}}],
        )
        wait_for_records(bootstrap, topics["predictions_topic"], 2, 60, service.log)
        _keyed(bootstrap, topics["label_topic"], [{"id": "before", "y": True}])  # its event comes next
        time.sleep(1.0)
        _keyed(bootstrap, topics["input_topic"], [{"id": "before", "x": {"a": 3.0}}])
        _keyed(bootstrap, topics["label_topic"], [
            {"id": "after", "y": True}, {"id": "after", "y": False}, {"id": "ghost", "y": True},
        ])  # fmt: skip
        wait_for_records(bootstrap, topics["predictions_topic"], 3, 60, service.log)

        def stats() -> dict:
            (partition,) = api.get("/api/stats").json()["partitions"].values()
            return partition["labels"]

        # The join keeps stream time: an event produced past labels.max_wait_seconds moves it on,
        # "late" expires unlearned and "ghost" is an orphan; late's label, coming now, is too late.
        time.sleep(6.5)
        _keyed(bootstrap, topics["input_topic"], [{"id": "tick", "x": {"a": 4.0}, "y": True}])
        wait_for_records(bootstrap, topics["predictions_topic"], 4, 60, service.log)  # tick's: late expired
        _keyed(bootstrap, topics["label_topic"], [{"id": "late", "y": False}])
        wait_for_records(bootstrap, topics["dead_letter_topic"], 2, 60, service.log)
        wait_until(lambda: stats()["orphans"] == 2, 30, "the orphans were not counted")
        counts = stats()
        metrics = api.get("/metrics").text
    finally:
        assert service.stop() == 0, service.log()
    assert (counts["joined"], counts["duplicates"], counts["expired"], counts["waiting"]) == (2, 1, 1, 0)
    letters = read_topic(bootstrap, topics["dead_letter_topic"], 2)
    reasons = {json.loads(letter["event"])["id"]: letter["error"] for letter in letters}
    assert reasons["late"] == "the event 'late' expired unlearned before its label came"
    assert reasons["ghost"].startswith("no event with id 'ghost' came within labels.max_wait_seconds=6")
    predictions = {p["id"]: p for p in read_topic(bootstrap, topics["predictions_topic"], 4)}
    assert predictions["before"]["y"] is True  # learned at once with the label that came first
    assert "y" not in predictions["after"]  # predicted before its label came
    examples = _examples(bootstrap, Config.model_validate(config).kafka.examples_topic, 0)
    assert [(event.id, event.y, prediction is not None) for _, event, prediction in examples] == [
        ("before", True, False),
        ("after", True, True),
        ("tick", True, False),
    ]
    assert (
        'stream_labels_joined_total{partition="' in metrics and "stream_label_delay_seconds_bucket" in metrics
    )


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_label_topic_that_is_not_co_partitioned_is_refused_at_start(kafka, tmp_path, new_topic, backend):
    config = _config(kafka, tmp_path, new_topic, backend)
    config["kafka"]["label_topic"] = new_topic(partitions=3, prefix="labels")
    service = ServiceProcess(tmp_path, config).start()
    assert service.process is not None
    assert service.process.wait(60) == 2, service.log()
    assert "must be co-partitioned with their events" in service.log()
    assert "has 3 partitions and the input" in service.log()


def test_rebuild_trains_the_last_checkpoint_again_from_the_examples_and_the_service_goes_on_from_it(
    kafka, tmp_path, new_topic
):
    config = _config(kafka, tmp_path, new_topic, "confluent-kafka", partitions=1)
    topics = config["kafka"]
    events, labels = delayed_stream(900, seed=4)
    _keyed(kafka.bootstrap_servers, topics["input_topic"], events[:700])
    _keyed(
        kafka.bootstrap_servers,
        topics["label_topic"],
        [label for label in labels if int(label["id"][1:]) < 700],
    )
    examples_topic = Config.model_validate(config).kafka.examples_topic
    service = ServiceProcess(tmp_path, config).start()
    try:
        wait_for_records(kafka.bootstrap_servers, examples_topic, 700, 120, service.log)
    finally:
        assert service.stop() == 0, service.log()
    store = SnapshotStore.from_config(Config.model_validate(config).snapshots, f"{topics['input_topic']}-0")
    last = store.list()[-1]
    original = store.load(last.id)

    rebuilt = subprocess.run(
        [sys.executable, "-m", "stream", "rebuild", "-c", str(service.config_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert f"partition 0: {last.id} rebuilt from 700 examples" in rebuilt.stdout
    state = store.load(last.id)  # in the checkpoint's place, from the examples alone
    assert store.get(last.id).note.startswith("rebuilt from 700 examples")
    assert canonical_pickle(state.model) == canonical_pickle(original.model)
    assert state.metrics.values() == original.metrics.values() and state.offsets == original.offsets

    service.start()
    try:
        _keyed(kafka.bootstrap_servers, topics["input_topic"], events[700:])
        _keyed(
            kafka.bootstrap_servers,
            topics["label_topic"],
            [label for label in labels if int(label["id"][1:]) >= 700],
        )
        wait_for_records(kafka.bootstrap_servers, examples_topic, 900, 120, service.log)
    finally:
        assert service.stop() == 0, service.log()
    assert f"from snapshot {last.id}; re-learned 0 examples" in service.log()
    predictions = read_topic(kafka.bootstrap_servers, topics["predictions_topic"], 900)
    assert sorted(p["id"] for p in predictions) == sorted(e["id"] for e in events)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_when_one_of_two_instances_dies_the_survivor_goes_on_with_its_labels_and_join(
    kafka, tmp_path, new_topic, backend
):
    config = _config(kafka, tmp_path, new_topic, backend)
    topics = config["kafka"]
    events, labels = delayed_stream(2_400, seed=13)
    first_half = {e["id"] for e in events[:1_200]}
    _keyed(kafka.bootstrap_servers, topics["input_topic"], events[:1_200])
    _keyed(
        kafka.bootstrap_servers,
        topics["label_topic"],
        [label for label in labels if label["id"] in first_half],
    )
    first = ServiceProcess(tmp_path, config, "first").start()
    second = ServiceProcess(tmp_path, config, "second").start()
    examples_topic = Config.model_validate(config).kafka.examples_topic
    try:
        wait_until(
            lambda: "assignment: ['" in first.log() and "assignment: ['" in second.log(),
            120,
            "the two instances never shared the partitions",
        )
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 1_200, 120, second.log)
        second.kill()  # its partition's join and examples go on at the survivor
        _keyed(kafka.bootstrap_servers, topics["input_topic"], events[1_200:])
        _keyed(
            kafka.bootstrap_servers,
            topics["label_topic"],
            [label for label in labels if label["id"] not in first_half],
        )
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], len(events), 180, first.log)
        wait_for_records(kafka.bootstrap_servers, examples_topic, len(events), 180, first.log)
    finally:
        if second.alive():
            second.kill()
        assert first.stop() == 0, first.log()
    assert first.log().count("assignment: [") >= 2  # it took the dead one's partition over
    _check_the_learning_order(kafka.bootstrap_servers, config, events, tmp_path)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_twenty_second_broker_outage_with_delayed_labels_loses_no_label_and_learns_none_twice(
    tmp_path, backend
):
    broker = LocalBroker(data_dir=tmp_path / "broker")
    broker.start()
    try:
        bootstrap = broker.bootstrap_servers
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        names = [f"events-{uuid.uuid4().hex[:8]}", f"labels-{uuid.uuid4().hex[:8]}"]
        admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1) for name in names])
        admin.close()
        config = service_config(
            bootstrap, tmp_path, kafka={"backend": backend, "input_topic": names[0], "label_topic": names[1]}
        )
        events, labels = delayed_stream(2_000, seed=21)
        first = {e["id"] for e in events[:1_000]}
        _keyed(bootstrap, names[0], events[:1_000])
        _keyed(bootstrap, names[1], [label for label in labels if label["id"] in first])
        examples_topic = Config.model_validate(config).kafka.examples_topic
        service = ServiceProcess(tmp_path, config).start()
        try:
            wait_for_records(bootstrap, config["kafka"]["predictions_topic"], 1_000, 120, service.log)
            api = httpx.Client(base_url=service.api_url(), timeout=10)
            broker.stop()
            time.sleep(20)  # the outage itself
            assert service.alive(), service.log()
            broker.start()
            wait_until(lambda: api.get("/ready").status_code == 200, 120, "the service never came back")
            _keyed(bootstrap, names[0], events[1_000:])
            _keyed(bootstrap, names[1], [label for label in labels if label["id"] not in first])
            wait_for_records(bootstrap, examples_topic, len(events), 180, service.log)
        finally:
            assert service.stop() == 0, service.log()
        _check_the_learning_order(bootstrap, config, events, tmp_path)
    finally:
        broker.close()
