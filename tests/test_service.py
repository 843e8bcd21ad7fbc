"""The service on a real broker: exactly-once learning, recovery, dead letters, rebalancing."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition
from typer.testing import CliRunner

from connectors import BACKENDS
from kafka_local import LocalBroker
from stream.checkpoint import PartitionId, restore_point
from stream.cli import app
from stream.config import Config
from stream.events import encode_record, validate_event
from stream.prequential import Engine
from stream.snapshots import SnapshotStore
from tests.kafka_helpers import (
    ProgressWatcher,
    ServiceProcess,
    assignment,
    drifting_events,
    duplicates,
    publish,
    read_topic,
    service_config,
    wait_for_records,
    wait_until,
    wait_until_shared,
)
from tests.model_equality import canonical_pickle

pytestmark = pytest.mark.kafka


def _reference(config: dict, events: list[dict]) -> tuple[list[str], Engine]:
    """An uninterrupted in-process run of the same engine over the same events."""
    engine = Engine(Config.model_validate(config), SnapshotStore(tempfile.mkdtemp(prefix="reference-")))
    predictions = [encode_record(engine.process(validate_event(event, "binary"))) for event in events]
    return predictions, engine


def _final_state(config: dict, topic: str, partition: int = 0):
    store = SnapshotStore(Path(config["snapshots"]["directory"]) / f"{topic}-{partition}")
    restored = restore_point(store, {PartitionId(topic, partition).key: 10**12})
    assert restored is not None, "the service left no snapshot"
    return restored


def _committed(bootstrap: str, config: dict, topic: str, partition: int = 0) -> tuple[int, str]:
    """The group's committed offset of a partition and the checkpoint id its metadata names, once
    two reads a second apart agree (a transaction the killed process ended may still complete)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=config["kafka"]["group_id"])
    reads: list[tuple[int, str]] = []
    try:
        while len(reads) < 2 or reads[-1] != reads[-2]:
            committed = consumer.committed(TopicPartition(topic, partition), metadata=True)
            assert committed is not None and committed.metadata, "nothing committed yet"
            # librdkafka stores the metadata string with its C terminator; kafka-python hands it back.
            reads.append((committed.offset, committed.metadata.rstrip("\x00")))
            time.sleep(1)
    finally:
        consumer.close()
    return reads[-1]


def test_twenty_thousand_events_are_each_predicted_once_and_match_replay(kafka, tmp_path):
    config = service_config(kafka.bootstrap_servers, tmp_path)
    topics = config["kafka"]
    events = drifting_events(20_000)
    publish(kafka.bootstrap_servers, topics["input_topic"], [json.dumps(e).encode() for e in events])
    expected, reference = _reference(config, events)

    service = ServiceProcess(tmp_path, config).start()
    try:
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 20_000, timeout=120)
    finally:
        assert service.stop() == 0, service.log()
    predictions = read_topic(kafka.bootstrap_servers, topics["predictions_topic"], 20_000)

    ids = [p["id"] for p in predictions]
    assert duplicates(ids) == {} and len(ids) == 20_000
    assert [encode_record(p) for p in predictions] == expected  # byte for byte what replay predicts
    manifest, state = _final_state(config, topics["input_topic"])
    assert manifest.reason == "shutdown"
    assert manifest.metrics == reference.summary().metrics
    assert state.drifts == reference.state.drifts >= 1

    kcat = shutil.which("kcat")
    assert kcat, "kcat is not installed: run `make setup`"
    seen = subprocess.run(
        [kcat, "-C", "-b", kafka.bootstrap_servers, "-t", topics["predictions_topic"], "-e", "-q",
         "-X", "isolation.level=read_committed", "-f", "%s\n"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert len(seen) == 20_000 and {json.loads(line)["id"] for line in seen} == set(ids)


# Each backend with ADWIN, and one with a detector that has a warning zone: warning snapshots, a
# challenger, and leftovers of uncommitted runs that must not crowd out the candidates.
@pytest.mark.parametrize(
    ("backend", "detector"),
    [
        ("kafka-python", "drift.ADWIN"),
        ("confluent-kafka", "drift.ADWIN"),
        ("confluent-kafka", "drift.binary.EDDM"),
    ],
)
def test_sigkill_at_five_random_points_changes_neither_the_model_nor_the_predictions(
    kafka, tmp_path, backend, detector
):
    config = service_config(
        kafka.bootstrap_servers,
        tmp_path,
        kafka={"backend": backend},
        drift={"detector": detector},
        snapshots={"keep_last": 2},
    )
    topics = config["kafka"]
    events = drifting_events(20_000, seed=7)
    publish(kafka.bootstrap_servers, topics["input_topic"], [json.dumps(e).encode() for e in events])
    expected, reference = _reference(config, events)

    kill_points = sorted(random.Random(20261123).sample(range(1_000, 19_000), 5))
    service = ServiceProcess(tmp_path, config)
    watcher = ProgressWatcher(kafka.bootstrap_servers, topics["predictions_topic"])
    store = SnapshotStore(Path(config["snapshots"]["directory"]) / f"{topics['input_topic']}-0")
    for number, point in enumerate(kill_points):
        service.start()
        assert watcher.wait_for(point) >= point, service.log()
        service.kill()  # no warning: mid-batch, mid-transaction
        if number == 2:
            # Damage the very snapshot the restart would restore (the one the commit names): it
            # must fall back to an older one and re-learn, silently, up to the committed offset.
            committed, damaged = _committed(kafka.bootstrap_servers, config, topics["input_topic"])
            (store.directory / store.get(damaged).entry / "state.pkl").write_bytes(b"damaged")
    watcher.close()
    service.start()
    try:
        wait_for_records(
            kafka.bootstrap_servers, topics["predictions_topic"], 20_000, timeout=180, log=service.log
        )
    finally:
        assert service.stop() == 0, service.log()
    predictions = read_topic(kafka.bootstrap_servers, topics["predictions_topic"], 20_000)

    ids = [p["id"] for p in predictions]
    assert duplicates(ids) == {}, "a read_committed reader saw a prediction twice"
    assert len(ids) == 20_000
    assert [encode_record(p) for p in predictions] == expected
    _, state = _final_state(config, topics["input_topic"])
    assert canonical_pickle(state.model) == canonical_pickle(reference.state.model)
    assert state.events == 20_000 and state.drifts == reference.state.drifts
    # The restart after the damage refused that snapshot and restored an older one, then
    # re-learned from there to the committed offset.
    log = service.log()
    refusal = log.index(f"cannot restore from snapshot {damaged}")
    fallback = re.compile(
        r"from snapshot (\S+) at offset (\d+); re-learned (\d+) events"
        rf" up to the committed offset {committed}\b"
    )
    older, start, relearned = fallback.search(log, refusal).groups()
    assert older != damaged and int(start) < committed and int(relearned) > 0, log[refusal:][:2000]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_twenty_second_broker_outage_loses_nothing(tmp_path, backend):
    broker = LocalBroker(data_dir=tmp_path / "broker")
    broker.start()
    try:
        config = service_config(broker.bootstrap_servers, tmp_path, kafka={"backend": backend})
        topics = config["kafka"]
        events = drifting_events(6_000, seed=3)
        publish(
            broker.bootstrap_servers, topics["input_topic"], [json.dumps(e).encode() for e in events[:3_000]]
        )
        expected, _ = _reference(config, events)
        service = ServiceProcess(tmp_path, config).start()
        try:
            wait_for_records(broker.bootstrap_servers, topics["predictions_topic"], 3_000, timeout=60)
            api = httpx.Client(base_url=service.api_url(), timeout=10)
            broker.stop()
            time.sleep(20)  # the outage itself (what is waited for below are outcomes)
            assert service.alive(), service.log()
            broker.start()
            wait_until(lambda: api.get("/ready").status_code == 200, 120, "the service never came back")
            publish(
                broker.bootstrap_servers,
                topics["input_topic"],
                [json.dumps(e).encode() for e in events[3_000:]],
            )
            wait_for_records(
                broker.bootstrap_servers, topics["predictions_topic"], 6_000, timeout=120, log=service.log
            )
        finally:
            assert service.stop() == 0, service.log()
        predictions = read_topic(broker.bootstrap_servers, topics["predictions_topic"], 6_000)
        assert duplicates([p["id"] for p in predictions]) == {}
        assert [encode_record(p) for p in predictions] == expected
    finally:
        broker.close()


def test_malformed_and_hostile_messages_go_to_the_dead_letter_topic(kafka, tmp_path):
    config = service_config(kafka.bootstrap_servers, tmp_path)
    topics = config["kafka"]
    good = drifting_events(200)
    hostile: list[bytes | None] = [
        b"\xff\xfe\x00garbage",
        b"{truncated",
        b'{"x": {"a": NaN}, "y": true}',
        b'{"x": {"a": [1, 2]}, "y": true}',
        b'{"x": {"a": 1.0}, "y": "perhaps"}',
        b'{"y": true}',
        b"[" * 50_000,
        b'{"x": {"a": 1.0}, "pad": "' + b"A" * 2_000_000 + b'"}',
        None,
    ]
    values = (
        [json.dumps(e).encode() for e in good[:100]] + hostile + [json.dumps(e).encode() for e in good[100:]]
    )
    keys = [b"tombstone" if value is None else None for value in values]  # Kafka needs a key or a value
    publish(kafka.bootstrap_servers, topics["input_topic"], values, keys)

    service = ServiceProcess(tmp_path, config).start()
    try:
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 200, timeout=60)
        wait_for_records(kafka.bootstrap_servers, topics["dead_letter_topic"], len(hostile), timeout=30)
        assert service.alive()
    finally:
        assert service.stop() == 0, service.log()
    predictions = read_topic(kafka.bootstrap_servers, topics["predictions_topic"], 200)
    letters = read_topic(kafka.bootstrap_servers, topics["dead_letter_topic"], len(hostile))

    assert len(predictions) == 200
    assert [letter["source"]["offset"] for letter in letters] == list(range(100, 100 + len(hostile)))
    reasons = [letter["error"] for letter in letters]
    assert "not UTF-8" in reasons[0] or "malformed JSON" in reasons[0]
    assert reasons[1].startswith("malformed JSON")
    assert "not a finite number" in reasons[2]
    assert "feature 'a' must be" in reasons[3]
    assert "label for a binary task" in reasons[4]
    assert "missing required field 'x'" in reasons[5]
    assert "malformed JSON" in reasons[6]
    assert "exceeds service.max_event_bytes" in reasons[7] and letters[7]["truncated"]
    assert reasons[8] == "empty message (no value)"
    assert letters[0]["event_base64"] == "//4AZ2FyYmFnZQ=="  # the original bytes, exactly
    _, state = _final_state(config, topics["input_topic"])
    assert state.errors == len(hostile) and state.labelled == 200


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_when_one_of_two_instances_dies_its_partitions_continue_from_the_right_state(
    kafka, tmp_path, new_topic, backend
):
    input_topic = new_topic(partitions=3, prefix="events")
    config = service_config(
        kafka.bootstrap_servers, tmp_path, kafka={"input_topic": input_topic, "backend": backend}
    )
    topics = config["kafka"]
    events = drifting_events(9_000, keys=30)
    values = [json.dumps(e).encode() for e in events]
    publish(
        kafka.bootstrap_servers, input_topic, values[:4_500], keys=[e["key"].encode() for e in events[:4_500]]
    )

    every_partition = {f"{input_topic}:{partition}" for partition in range(3)}
    first = ServiceProcess(tmp_path, config, "first").start()
    second = ServiceProcess(tmp_path, config, "second").start()
    try:
        # The group settles with both instances owning partitions, between them all three.
        wait_until_shared([first, second], every_partition)
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 4_500, timeout=120)
        owned_by_second = assignment(second.log())
        second.kill()
        publish(
            kafka.bootstrap_servers,
            input_topic,
            values[4_500:],
            keys=[e["key"].encode() for e in events[4_500:]],
        )
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 9_000, timeout=180)
        taken_over = assignment(first.log())
    finally:
        if second.alive():
            second.kill()
        assert first.stop() == 0, first.log()
    predictions = read_topic(kafka.bootstrap_servers, topics["predictions_topic"], 9_000)

    assert duplicates([p["id"] for p in predictions]) == {}
    assert len(predictions) == 9_000
    assert owned_by_second and taken_over == every_partition  # the survivor took the dead one's over
    # Each partition's model equals an uninterrupted run over that partition's events, in order.
    by_partition = _events_by_partition(kafka.bootstrap_servers, input_topic)
    for partition, partition_events in by_partition.items():
        _, reference = _reference(config, partition_events)
        _, state = _final_state(config, input_topic, partition)
        assert state.events == len(partition_events)
        assert canonical_pickle(state.model) == canonical_pickle(reference.state.model), partition


def _events_by_partition(bootstrap: str, topic: str) -> dict[int, list[dict]]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=3000
    )
    result: dict[int, list[dict]] = {}
    for record in consumer:
        result.setdefault(record.partition, []).append(json.loads(record.value))
    consumer.close()
    return result


def test_a_rollback_through_the_cli_takes_effect_in_the_running_service(kafka, tmp_path):
    config = service_config(kafka.bootstrap_servers, tmp_path, api={"port": 0, "token": "s3cret"})
    topics = config["kafka"]
    events = drifting_events(3_000)
    publish(kafka.bootstrap_servers, topics["input_topic"], [json.dumps(e).encode() for e in events[:2_000]])
    service = ServiceProcess(tmp_path, config).start()
    try:
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 2_000, timeout=60)
        api = service.api_url()
        # A drift snapshot: a late checkpoint's retention may remove the oldest checkpoint.
        listed = CliRunner().invoke(app, ["snapshots", "list", "--api", api, "--reason", "drift", "--json"])
        target = json.loads(listed.output)[0]["id"]
        refused = CliRunner().invoke(app, ["snapshots", "rollback", target, "--api", api, "--token", "wrong"])
        assert refused.exit_code == 1 and "401" in refused.output
        result = CliRunner().invoke(app, ["snapshots", "rollback", target, "--api", api, "--token", "s3cret"])
        assert result.exit_code == 0 and f"rolled back to {target}" in result.output, result.output
        publish(
            kafka.bootstrap_servers, topics["input_topic"], [json.dumps(e).encode() for e in events[2_000:]]
        )
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 3_000, timeout=60)
    finally:
        assert service.stop() == 0, service.log()
    predictions = read_topic(kafka.bootstrap_servers, topics["predictions_topic"], 3_000)
    before = {p["model_version"] for p in predictions[:2_000]}
    after = {p["model_version"] for p in predictions[2_000:]}
    assert max(after) > max(before)
    _, state = _final_state(config, topics["input_topic"])
    assert state.rollbacks >= 1
    assert any(
        m.note == f"manual rollback to {target}"
        for m in SnapshotStore(Path(config["snapshots"]["directory"]) / f"{topics['input_topic']}-0").list(
            reason="rollback"
        )
    )


def test_at_least_once_may_repeat_predictions_but_never_learns_an_event_twice(kafka, tmp_path):
    config = service_config(kafka.bootstrap_servers, tmp_path, service={"guarantee": "at_least_once"})
    topics = config["kafka"]
    events = drifting_events(10_000, seed=11)
    publish(kafka.bootstrap_servers, topics["input_topic"], [json.dumps(e).encode() for e in events])
    expected, reference = _reference(config, events)

    service = ServiceProcess(tmp_path, config)
    watcher = ProgressWatcher(kafka.bootstrap_servers, topics["predictions_topic"])
    for point in (2_500, 6_000):
        service.start()
        assert watcher.wait_for(point) >= point, service.log()
        service.kill()
    watcher.close()
    service.start()
    try:
        # Repeats count as records: wait until every event has a prediction.
        wait_until(
            lambda: (
                len({p["id"] for p in read_topic(kafka.bootstrap_servers, topics["predictions_topic"], 0)})
                == 10_000
            ),
            120,
            f"not every event was predicted:\n{service.log()[-6000:]}",
        )
    finally:
        assert service.stop() == 0, service.log()
    predictions = read_topic(kafka.bootstrap_servers, topics["predictions_topic"], 10_000)

    by_id = {p["id"]: encode_record(p) for p in predictions}  # a repeated prediction is the same prediction
    assert sorted(by_id.values()) == sorted(expected)
    for prediction in predictions:
        assert encode_record(prediction) == by_id[prediction["id"]]
    _, state = _final_state(config, topics["input_topic"])
    assert state.events == 10_000
    assert canonical_pickle(state.model) == canonical_pickle(reference.state.model)
