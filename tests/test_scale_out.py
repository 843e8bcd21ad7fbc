"""Instances on separate machines that share nothing but Kafka and S3: takeovers and zombies.

Each instance runs in a working directory of its own (no shared disk); their snapshots live in a
bucket on the real S3-compatible server the suite starts, and the Kafka broker is real too.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors import BACKENDS
from stream.checkpoint import PartitionId, restore_point
from stream.config import Config
from stream.events import encode_record
from stream.snapshots import SnapshotStore
from tests.kafka_helpers import (
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
from tests.slow_models import PAUSE_DIRECTORY
from tests.test_service import _events_by_partition, _reference

pytestmark = pytest.mark.kafka

PARTITIONS = 3


@pytest.fixture
def s3_env(s3, monkeypatch) -> Iterator[None]:
    """The S3 server's credentials in the environment the service processes inherit."""
    for name, value in (
        ("AWS_ACCESS_KEY_ID", s3.access_key),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key),
        ("AWS_REGION", s3.region),
    ):
        monkeypatch.setenv(name, value)
    yield


def _config(kafka, s3, bucket: str, tmp_path: Path, input_topic: str, backend: str, **service) -> dict:
    return service_config(
        kafka.bootstrap_servers,
        tmp_path,
        kafka={"input_topic": input_topic, "backend": backend},
        snapshots={
            "directory": f"s3://{bucket}/stream",
            "s3": {"endpoint_url": s3.endpoint_url},
            "hmac_key": "shared by every instance",
        },
        service=service,
    )


def _instance(tmp_path: Path, config: dict, name: str, env: dict[str, str] | None = None) -> ServiceProcess:
    """An instance in a working directory of its own: nothing on disk is shared with the others."""
    workdir = tmp_path / name
    workdir.mkdir(exist_ok=True)
    return ServiceProcess(workdir, config, name, env=env)


def _assert_each_partition_as_if_uninterrupted(kafka, config: dict, input_topic: str, expected: int) -> None:
    """Every prediction once to a read_committed reader, and per partition the predictions and
    the final model byte-identical to one uninterrupted run over that partition's events."""
    predictions = read_topic(kafka.bootstrap_servers, config["kafka"]["predictions_topic"], expected)
    assert duplicates([p["id"] for p in predictions]) == {}, "a read_committed reader saw a prediction twice"
    assert len(predictions) == expected
    published = {p["id"]: encode_record(p) for p in predictions}
    snapshots = Config.model_validate(config).snapshots
    for partition, events in _events_by_partition(kafka.bootstrap_servers, input_topic).items():
        reference_predictions, reference = _reference(config, events)
        ids = [event["id"] for event in events]
        assert [published[i] for i in ids] == reference_predictions, f"partition {partition}"
        store = SnapshotStore.from_config(snapshots, PartitionId(input_topic, partition).scope)
        restored = restore_point(store, {PartitionId(input_topic, partition).key: 10**12})
        assert restored is not None, f"partition {partition} left no snapshot in S3"
        state = restored[1]
        assert state.events == len(events)
        assert canonical_pickle(state.model) == canonical_pickle(reference.state.model), partition


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_two_instances_sharing_only_kafka_and_s3_survive_a_sigkill_and_a_restart(
    kafka, s3, s3_bucket, s3_env, tmp_path, new_topic, backend
):
    input_topic = new_topic(partitions=PARTITIONS, prefix="events")
    config = _config(kafka, s3, s3_bucket, tmp_path, input_topic, backend)
    events = drifting_events(9_000, keys=30)
    values, keys = [json.dumps(e).encode() for e in events], [e["key"].encode() for e in events]
    publish(kafka.bootstrap_servers, input_topic, values[:3_000], keys=keys[:3_000])
    predictions_topic = config["kafka"]["predictions_topic"]
    every_partition = {f"{input_topic}:{partition}" for partition in range(PARTITIONS)}

    first, second = (
        _instance(tmp_path, config, "first").start(),
        _instance(tmp_path, config, "second").start(),
    )
    try:
        wait_until_shared([first, second], every_partition)
        wait_for_records(kafka.bootstrap_servers, predictions_topic, 3_000, timeout=120, log=first.log)
        owned_by_second = assignment(second.log())
        second.kill()
        publish(kafka.bootstrap_servers, input_topic, values[3_000:6_000], keys=keys[3_000:6_000])
        wait_for_records(kafka.bootstrap_servers, predictions_topic, 6_000, timeout=180, log=first.log)
        taken_over = assignment(first.log())
        second.start()  # the same instance again, from its own (empty of state) working directory
        wait_until(lambda: bool(assignment(second.log())), 120, "the restarted instance got no partition")
        publish(kafka.bootstrap_servers, input_topic, values[6_000:], keys=keys[6_000:])
        wait_for_records(kafka.bootstrap_servers, predictions_topic, 9_000, timeout=180, log=second.log)
    finally:
        for instance in (first, second):
            if instance.alive():
                assert instance.stop() == 0, instance.log()

    assert owned_by_second and taken_over == every_partition  # the survivor took the dead one's over
    restored_from_s3 = [
        line for line in first.log().splitlines() if "restored" in line and "from snapshot" in line
    ]
    assert restored_from_s3, "the survivor restored nothing from S3"
    assert not list((tmp_path / "first").glob("**/state.pkl")) and not list(
        (tmp_path / "second").glob("**/state.pkl")
    )
    _assert_each_partition_as_if_uninterrupted(kafka, config, input_topic, 9_000)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_zombie_paused_past_its_session_neither_publishes_nor_commits_nor_leaves_a_snapshot_in_use(
    kafka, s3, s3_bucket, s3_env, tmp_path, new_topic, backend
):
    input_topic = new_topic(partitions=PARTITIONS, prefix="events")
    config = _config(kafka, s3, s3_bucket, tmp_path, input_topic, backend)
    config["model"] = {"task": "binary", "factory": "tests.slow_models:pausing_tree"}
    events = drifting_events(9_000, keys=30)
    for event in events:
        event["x"]["pause"] = int(3_000 <= int(event["id"].rpartition("-")[2]) < 3_030)  # in every partition
    values, keys = [json.dumps(e).encode() for e in events], [e["key"].encode() for e in events]
    predictions_topic = config["kafka"]["predictions_topic"]
    every_partition = {f"{input_topic}:{partition}" for partition in range(PARTITIONS)}
    cue = tmp_path / "cue"
    cue.mkdir()

    zombie = _instance(tmp_path, config, "zombie", env={PAUSE_DIRECTORY: str(cue)}).start()
    survivor = _instance(tmp_path, config, "survivor").start()
    try:
        wait_until_shared([zombie, survivor], every_partition)
        owned_by_zombie = assignment(zombie.log())
        publish(kafka.bootstrap_servers, input_topic, values, keys=keys)
        # The zombie stops in the middle of learning: an open transaction holds its predictions
        # since its last commit, and its model has learned past its last checkpoint.
        wait_until((cue / "paused").exists, 120, "the zombie never reached the pause")
        assert zombie.process is not None
        os.kill(zombie.process.pid, signal.SIGSTOP)  # past its session: the group gives its partitions away
        wait_until(lambda: assignment(survivor.log()) == every_partition, 120, "the survivor never took over")
        os.kill(zombie.process.pid, signal.SIGCONT)
        (cue / "go").touch()  # it goes on where it stopped, unaware, to its next checkpoint
        wait_until(lambda: "fenced: partition" in zombie.log(), 120, "the zombie was never fenced")
        fenced_at = len(zombie.log())
        # It recovers like after any failure: back in the group, from the commits.
        wait_until(lambda: assignment(zombie.log()[fenced_at:]), 120, "the zombie never rejoined")
        wait_for_records(kafka.bootstrap_servers, predictions_topic, 9_000, timeout=240, log=survivor.log)
    finally:
        for instance in (zombie, survivor):
            if instance.process is not None and instance.alive():
                os.kill(instance.process.pid, signal.SIGCONT)
                assert instance.stop() == 0, instance.log()

    assert owned_by_zombie
    fenced = next(line for line in zombie.log().splitlines() if "fenced: partition" in line)
    assert "was taken over by survivor" in fenced, fenced
    _assert_each_partition_as_if_uninterrupted(kafka, config, input_topic, 9_000)
