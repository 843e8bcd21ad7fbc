"""Helpers for tests that run the service as a real process against a real broker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream.config import Config
from stream.datasets import as_event, recurring_concepts

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def drifting_events(count: int, seed: int = 42, keys: int = 0) -> list[dict[str, Any]]:
    segment = count // 3 + 1
    events = [as_event(r) for r in recurring_concepts(segment, (0, 2, 0), seed=seed)][:count]
    if keys:
        for n, event in enumerate(events):
            event["key"] = f"k{n % keys}"
    return events


def publish(
    bootstrap: str, topic: str, values: list[bytes | None], keys: list[bytes | None] | None = None
) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=8 * 1024 * 1024)
    for n, value in enumerate(values):
        producer.send(topic, value=value, key=keys[n] if keys else None)
    producer.flush()
    producer.close()


def read_topic(
    bootstrap: str, topic: str, expected: int, timeout: float = 60.0, committed_only: bool = True
) -> list[Any]:
    """Every record of ``topic`` (JSON-decoded values): at least ``expected`` within ``timeout``,
    then the rest up to the topic's end, so a duplicate beyond ``expected`` is seen too.

    Read after the writer has stopped, this is everything the topic will ever hold.
    """
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if committed_only else "read_uncommitted",
        group_id=None,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    records: list[Any] = []

    def read(timeout_ms: int) -> None:
        for batch in consumer.poll(timeout_ms=timeout_ms).values():
            records.extend(json.loads(record.value) for record in batch)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(records) < expected:
        read(500)
    # The end (for read_committed, the last stable offset) as it is now; reading is done once the
    # position of every partition has reached it.
    ends = consumer.end_offsets([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    while time.monotonic() < deadline + 30 and any(consumer.position(tp) < end for tp, end in ends.items()):
        read(200)
    consumer.close()
    return records


def wait_until(condition: Callable[[], bool], timeout: float, message: str) -> None:
    """Poll ``condition`` every 0.2 s until it holds; fail with ``message`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


def wait_for_records(
    bootstrap: str, topic: str, count: int, timeout: float = 120.0, log: Callable[[], str] | None = None
) -> None:
    """Wait until ``topic`` holds ``count`` committed records (progress, not the final read); on
    failure the message ends with the tail of ``log()`` (the service's log, say)."""
    watcher = ProgressWatcher(bootstrap, topic)
    try:
        seen = watcher.wait_for(count, timeout)
    finally:
        watcher.close()
    tail = f"\n{log()[-6000:]}" if log else ""
    assert seen >= count, f"only {seen} of {count} records reached {topic} in {timeout:.0f} s{tail}"


class ProgressWatcher:
    """Counts the committed records of a topic as they arrive, without re-reading."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.count = 0
        self.consumer = KafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            isolation_level="read_committed", group_id=None,
        )  # fmt: skip

    def wait_for(self, at_least: int, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while self.count < at_least and time.monotonic() < deadline:
            self.count += sum(len(batch) for batch in self.consumer.poll(timeout_ms=50).values())
        return self.count

    def close(self) -> None:
        self.consumer.close()


def duplicates(ids: list[str]) -> dict[str, int]:
    return {event_id: n for event_id, n in Counter(ids).items() if n > 1}


class ServiceProcess:
    """``stream serve`` as a child process with its own config file."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        instance_id: str | None = "test",
        name: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        """``instance_id=None``: the service picks its own (give each such process a ``name``);
        ``env``: variables for this process alone."""
        self.workdir = workdir
        self.env = env or {}
        self.instance_id = instance_id
        name = name or str(instance_id)
        self.config_path = workdir / f"config-{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"service-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        env = {key: value for key, value in os.environ.items() if not key.startswith("STREAM__")}
        env["PYTHONPATH"] = str(PROJECT_ROOT)  # for models the tests define (tests.slow_models)
        env.update(self.env)
        command = [sys.executable, "-m", "stream", "serve", "-c", str(self.config_path)]
        if self.instance_id is not None:
            command += ["--instance-id", self.instance_id]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
            )
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api_url(self, timeout: float = 30.0) -> str:
        """The API's address, from the log line the service writes once it listens."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"API and dashboard at (http://[\d.]+:\d+)/", self.log())
            if found:
                return found.group(1)
            time.sleep(0.1)
        raise AssertionError(f"the API did not start:\n{self.log()}")


def service_config(bootstrap: str, tmp_path: Path, **sections: Any) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    base: dict[str, Any] = {
        "model": {"task": "binary", "pipeline": ["tree.HoeffdingTreeClassifier"]},
        "drift": {"policy": "best"},
        "kafka": {
            "bootstrap_servers": bootstrap,
            "input_topic": f"events-{suffix}",
            "predictions_topic": f"predictions-{suffix}",
            "dead_letter_topic": f"dead-{suffix}",
            "group_id": f"group-{suffix}",
        },
        "snapshots": {"directory": str(tmp_path / "snapshots")},
        "service": {
            "checkpoint_every_events": 500,
            "checkpoint_every_seconds": 1.0,
            "status_every_seconds": 2.0,
        },
        "api": {"port": 0},  # a free port: several services may run at once
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    Config.model_validate(base)  # a typo in a test config fails here, not in the child process
    return base


def assignment(log: str) -> set[str]:
    """The partitions an instance owns, from the last assignment it logged."""
    assignments = re.findall(r"assignment: \[(.*)\]", log)
    return set(re.findall(r"'([^']+)'", assignments[-1])) if assignments else set()


def wait_until_shared(instances: list[ServiceProcess], partitions: set[str], timeout: float = 120) -> None:
    """Wait until every instance owns partitions and, between them, all of ``partitions``."""
    wait_until(
        lambda: (
            all(assignment(i.log()) for i in instances)
            and set().union(*(assignment(i.log()) for i in instances)) == partitions
        ),
        timeout,
        f"the {len(instances)} instances never shared the partitions",
    )
