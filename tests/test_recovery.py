"""Recovery always makes progress, on the real broker and both backends.

Long re-learning stays in the group and moves the restore point forward; processes on one host
never share an instance id; the input topic is waited for, never created; a frozen broker cannot
block the loop past ``kafka.request_timeout_seconds``; a dead instance's open transaction holds
readers back for ``kafka.transaction_timeout_seconds`` at most; a snapshot store that refuses
writes is named as such, backed off from, and shown on ``/health``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from confluent_kafka import KafkaException
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic

from connectors import BACKENDS, create_connector
from connectors.base import ClientSettings
from kafka_local import LocalBroker
from stream.events import encode_record
from tests.kafka_helpers import (
    PROJECT_ROOT,
    ServiceProcess,
    drifting_events,
    duplicates,
    publish,
    read_topic,
    service_config,
    wait_for_records,
    wait_until,
)
from tests.test_service import _reference

pytestmark = pytest.mark.kafka

RESTORED = re.compile(
    r"restored (\S+) from (?:a new model|snapshot (\S+)) at offset (\d+); "
    r"re-learned (\d+) events up to the committed offset (\d+)"
)


def _spelled(backend: str, **milliseconds: int) -> dict[str, int]:
    """Client options in the backend's spelling: ``max_poll_interval_ms`` or ``max.poll.interval.ms``."""
    return {
        (key if backend == "kafka-python" else key.replace("_", ".")): v for key, v in milliseconds.items()
    }


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_re_learning_longer_than_the_poll_interval_finishes_once_and_moves_the_restore_point(
    kafka, tmp_path, backend
):
    config = service_config(
        kafka.bootstrap_servers,
        tmp_path,
        model={"factory": "tests.slow_models:slow_tree"},
        drift={"policy": "none"},
        kafka={
            "backend": backend,
            # Each kind of client gets only its own options (kafka-python refuses any other).
            "consumer_options": _spelled(backend, max_poll_interval_ms=6000, session_timeout_ms=6000),
            "producer_options": _spelled(backend, linger_ms=2),
        },
        # No checkpoint of its own before it is killed: the restart re-learns all it did.
        service={"checkpoint_every_events": 10**6, "checkpoint_every_seconds": 3600},
    )
    topics = config["kafka"]
    events = drifting_events(2_600, seed=5)
    values = [json.dumps(e).encode() for e in events]
    publish(kafka.bootstrap_servers, topics["input_topic"], values[:2_500])
    expected, _ = _reference(config, events)

    service = ServiceProcess(tmp_path, config)
    service.start()
    wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 2_000, log=service.log)
    service.kill()
    service.start()  # re-learns about 2,000 events at 4 ms each: 8 s, over the 6 s poll interval
    try:
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 2_500, log=service.log)
        service.kill()
        publish(kafka.bootstrap_servers, topics["input_topic"], values[2_500:])
        service.start()
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 2_600, log=service.log)
    finally:
        assert service.stop() == 0, service.log()
    predictions = read_topic(kafka.bootstrap_servers, topics["predictions_topic"], 2_600)
    assert duplicates([p["id"] for p in predictions]) == {}
    assert [encode_record(p) for p in predictions] == expected

    restores = [match.groups() for match in RESTORED.finditer(service.log())]
    # One restore per start: the long one was not started over by a rebalance.
    assert len(restores) == 3, service.log()[-5000:]
    _, _, _, long_relearn, long_committed = restores[1]
    assert int(long_relearn) >= 1_500
    # The third start restored from the checkpoint the second took at its first tick after its
    # re-learning: after the first event it processed, if one came.
    _, named, start, _, _ = restores[2]
    assert named.endswith("-checkpoint") and int(long_committed) <= int(start) <= int(long_committed) + 1


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_processes_on_one_host_never_share_an_instance_id(kafka, tmp_path, new_topic, backend):
    input_topic = new_topic(partitions=2, prefix="events")
    config = service_config(
        kafka.bootstrap_servers, tmp_path, kafka={"input_topic": input_topic, "backend": backend}
    )
    topics = config["kafka"]
    events = drifting_events(2_000, keys=20)
    publish(
        kafka.bootstrap_servers,
        input_topic,
        [json.dumps(e).encode() for e in events],
        keys=[e["key"].encode() for e in events],
    )
    first = ServiceProcess(tmp_path, config, None, "first").start()
    second = ServiceProcess(tmp_path, config, None, "second").start()
    try:
        wait_until(lambda: all("starting instance=" in p.log() for p in (first, second)), 30, "not started")
        host = socket.gethostname().replace(".", "-")
        ids = {re.search(r"starting instance=(\S+)", p.log()).group(1) for p in (first, second)}  # type: ignore[union-attr]
        assert ids == {host, f"{host}-2"}
        # Naming an id another process on this host holds is refused at once.
        taken = sorted(ids)[0]
        refused = subprocess.run(
            [sys.executable, "-m", "stream", "serve", "-c", str(first.config_path), "--instance-id", taken],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        )  # fmt: skip
        assert refused.returncode == 2
        assert f"instance id {taken!r} of group {topics['group_id']!r} is in use by process" in refused.stderr
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 2_000, log=first.log)
    finally:
        assert second.stop() == 0, second.log()
        assert first.stop() == 0, first.log()
    predictions = read_topic(kafka.bootstrap_servers, topics["predictions_topic"], 2_000)
    assert duplicates([p["id"] for p in predictions]) == {} and len(predictions) == 2_000


def test_a_confluent_member_fenced_by_its_instance_id_raises_instead_of_idling(kafka, new_topic):
    topic = new_topic()
    publish(kafka.bootstrap_servers, topic, [b"x"] * 10)
    connector = create_connector("confluent-kafka", kafka.bootstrap_servers)
    group = f"group-{uuid.uuid4().hex[:6]}"
    fenced = connector.source([topic], group, "same")
    try:
        wait_until(
            lambda: fenced.poll(0.2, 10) is not None and bool(fenced.assignment()), 30, "never assigned"
        )
        usurper = connector.source([topic], group, "same")
        deadline = time.monotonic() + 30
        with pytest.raises(KafkaException, match="fenced"):
            while time.monotonic() < deadline:
                usurper.poll(0.1, 10)
                fenced.poll(0.1, 10)
        usurper.close()
    finally:
        fenced.close()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_the_service_waits_for_its_input_topic_instead_of_creating_it(kafka, tmp_path, backend):
    config = service_config(kafka.bootstrap_servers, tmp_path, kafka={"backend": backend})
    topics = config["kafka"]
    service = ServiceProcess(tmp_path, config).start()
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        wait_until(lambda: "waiting for the input topic" in service.log(), 60, "it never said it waits")
        time.sleep(3)  # a few more rounds of waiting: still nothing created
        assert topics["input_topic"] not in admin.list_topics()
        # The operator's create, with the partitions they chose, goes through.
        admin.create_topics([NewTopic(topics["input_topic"], num_partitions=3, replication_factor=1)])
        events = drifting_events(300, keys=9)
        publish(
            kafka.bootstrap_servers,
            topics["input_topic"],
            [json.dumps(e).encode() for e in events],
            keys=[e["key"].encode() for e in events],
        )
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 300, log=service.log)
    finally:
        admin.close()
        assert service.stop() == 0, service.log()
    partitions = [f"{topics['input_topic']}:{p}" for p in range(3)]
    assert f"assignment: {partitions}" in service.log()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_frozen_broker_never_blocks_the_loop_longer_than_the_request_timeout(tmp_path, backend):
    broker = LocalBroker(data_dir=tmp_path / "broker")
    broker.start()
    try:
        config = service_config(
            broker.bootstrap_servers,
            tmp_path,
            kafka={"backend": backend, "request_timeout_seconds": 2.0},
            model={"factory": "tests.slow_models:slow_tree"},
            service={"stall_seconds": 15.0, "unhealthy_after_failures": 2},
        )
        topics = config["kafka"]
        events = drifting_events(2_000, seed=9)
        values = [json.dumps(e).encode() for e in events]
        publish(broker.bootstrap_servers, topics["input_topic"], values[:1_500])
        expected, _ = _reference(config, events)
        service = ServiceProcess(tmp_path, config).start()
        try:
            api = httpx.Client(base_url=service.api_url(), timeout=5)
            wait_for_records(broker.bootstrap_servers, topics["predictions_topic"], 300, log=service.log)
            assert broker.process is not None
            # Mid-stream (about 200 events/s): no answers and no closed connections from now on.
            broker.process.send_signal(signal.SIGSTOP)
            try:
                answers = []
                frozen_until = time.monotonic() + 30
                while time.monotonic() < frozen_until:
                    answers.append(api.get("/health").json())
                    time.sleep(0.5)
            finally:
                broker.process.send_signal(signal.SIGCONT)
            stalled = [answer for answer in answers if answer["status"] == "stalled"]
            assert not stalled, f"a client call blocked the loop: {stalled[0]}\n{service.log()[-4000:]}"
            # It said what failed, and the health check told a supervisor it is failing.
            assert "lost the broker or a Kafka client failed" in service.log()
            assert any(answer["status"] == "failing" for answer in answers), answers
            publish(broker.bootstrap_servers, topics["input_topic"], values[1_500:])
            wait_for_records(
                broker.bootstrap_servers, topics["predictions_topic"], 2_000, timeout=120, log=service.log
            )
            wait_until(lambda: api.get("/health").status_code == 200, 60, "never healthy again")
        finally:
            assert service.stop() == 0, service.log()
        predictions = read_topic(broker.bootstrap_servers, topics["predictions_topic"], 2_000)
        assert duplicates([p["id"] for p in predictions]) == {}
        assert [encode_record(p) for p in predictions] == expected
    finally:
        broker.close()


DIE_IN_A_TRANSACTION = """
import os, signal, sys
from connectors import create_connector
from connectors.base import ClientSettings
backend, bootstrap, topic, timeout = sys.argv[1:]
sink = create_connector(backend, bootstrap, ClientSettings(transaction_timeout=float(timeout))).sink("dying")
sink.begin()
sink.send(topic, b"never committed")
import time; time.sleep(1)  # the record reaches the broker: the transaction is open there
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_dead_instances_transaction_holds_readers_back_for_the_transaction_timeout_at_most(
    kafka, new_topic, backend
):
    topic = new_topic()
    subprocess.run(
        [sys.executable, "-c", DIE_IN_A_TRANSACTION, backend, kafka.bootstrap_servers, topic, "3"],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, timeout=60,
    )  # fmt: skip
    survivor = create_connector(backend, kafka.bootstrap_servers, ClientSettings()).sink("survivor")
    survivor.begin()
    survivor.send(topic, b"committed")
    survivor.commit({}, None)
    committed_at = time.monotonic()
    reader = KafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest",
        isolation_level="read_committed", group_id=None,
    )  # fmt: skip
    seen: list[bytes] = []
    try:
        while not seen and time.monotonic() - committed_at < 60:
            seen += [r.value for batch in reader.poll(timeout_ms=200).values() for r in batch]
    finally:
        reader.close()
        survivor.close()
    held_back = time.monotonic() - committed_at
    print(f"{backend}: a read_committed reader saw the survivor's record after {held_back:.1f} s")
    assert seen == [b"committed"]
    # The broker looks for expired transactions every transaction.abort.timed.out.transaction.
    # cleanup.interval.ms (10 s by default); the timeout used to be a fixed 30 s.
    assert held_back < 3 + 10 + 2, held_back


def test_a_snapshot_store_that_refuses_writes_is_named_backed_off_from_and_shown_on_health(kafka, tmp_path):
    config = service_config(
        kafka.bootstrap_servers,
        tmp_path,
        service={"checkpoint_every_events": 200, "unhealthy_after_failures": 3},
    )
    topics = config["kafka"]
    events = drifting_events(3_000, seed=13)
    values = [json.dumps(e).encode() for e in events]
    publish(kafka.bootstrap_servers, topics["input_topic"], values[:1_000])
    expected, _ = _reference(config, events)
    folder = Path(config["snapshots"]["directory"]) / f"{topics['input_topic']}-0"
    service = ServiceProcess(tmp_path, config).start()
    try:
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 1_000, log=service.log)
        api = httpx.Client(base_url=service.api_url(), timeout=5)
        # Read-only, even for root: no snapshot can be written until it is lifted.
        subprocess.run(["chattr", "+i", str(folder)], check=True)
        try:
            publish(kafka.bootstrap_servers, topics["input_topic"], values[1_000:2_000])
            wait_until(lambda: api.get("/health").status_code == 503, 60, "/health never said it is failing")
            health = api.get("/health").json()
            assert health["status"] == "failing" and "the snapshot store failed" in health["reason"]
            assert "Operation not permitted" in api.get("/api/stats").json()["last_failure"]
            failures = [float(m) for m in re.findall(r"snapshot store failed: .*? in (\d+) s", service.log())]
            assert failures[:3] == [1, 2, 4], failures  # backing off, not restarting every second
            assert "lost the broker" not in service.log()
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        publish(kafka.bootstrap_servers, topics["input_topic"], values[2_000:])
        wait_for_records(
            kafka.bootstrap_servers, topics["predictions_topic"], 3_000, timeout=120, log=service.log
        )
        wait_until(lambda: api.get("/health").status_code == 200, 60, "never healthy again")
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=False)
        assert service.stop() == 0, service.log()
    predictions = read_topic(kafka.bootstrap_servers, topics["predictions_topic"], 3_000)
    assert duplicates([p["id"] for p in predictions]) == {}
    assert [encode_record(p) for p in predictions] == expected
