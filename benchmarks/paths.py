"""The Kafka paths the benchmarks run, as processes: how each is started, read and stopped.

service-eos / service-alos                 ``stream serve`` on kafka-python, exactly_once / at_least_once
service-eos-confluent / -alos-confluent    the same on the confluent-kafka backend
service-eos-delayed-confluent              delayed labels: events without ``y``, each label on the label
                                           topic; done when every label is learned (examples topic)
service-eos-confluent-workers1 / -workers2 ``stream serve --workers 1`` / ``--workers 2`` (a supervisor and
                                           two worker processes), both on a 4-partition input topic
peer-kafka-python                          a plain kafka-python consume/predict/produce/learn script
peer-quix-eos / peer-quix-alos             the model in a Quix Streams application
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from benchmarks import REPO_ROOT
from benchmarks.models import FACTORIES
from connectors import create_connector

KAFKA_PATHS = (
    "service-eos",
    "service-alos",
    "service-eos-confluent",
    "service-alos-confluent",
    "service-eos-delayed-confluent",
    "service-eos-confluent-workers1",
    "service-eos-confluent-workers2",
    "peer-kafka-python",
    "peer-quix-eos",
    "peer-quix-alos",
)
# Paths whose labels come on their own topic: measured for throughput only.
DELAYED_PATHS = ("service-eos-delayed-confluent",)
# ``stream serve --workers N`` on an input of WORKER_PARTITIONS partitions, the events spread evenly
# over them: measured for throughput only, as a ratio to one worker on the same partitions.
WORKER_PATHS = {"service-eos-confluent-workers1": 1, "service-eos-confluent-workers2": 2}
WORKER_PARTITIONS = 4
# How often every path that commits on a timer commits: the service's default, and Quix is set to it.
COMMIT_INTERVAL = 0.2
# A path that shows no progress for this long has failed (start-up and a group join take seconds).
STALL_SECONDS = 120.0
LOG_TAIL_LINES = 30
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def engine_config(model: str, snapshots: str, **service: Any) -> dict[str, Any]:
    """The service's config in every benchmark: drift policy ``none`` (the detector runs, nothing
    switches) so every path learns the same model; defaults otherwise."""
    return {
        "model": {"task": "binary", "factory": f"benchmarks.models:{FACTORIES[model]}"},
        "drift": {"policy": "none"},
        "snapshots": {"directory": snapshots},
        "api": {"enabled": False},
        "service": {"status_every_seconds": 30.0, "commit_every_seconds": COMMIT_INTERVAL, **service},
    }


@dataclass
class Run:
    """One path's process on its own fresh topics."""

    path: str
    model: str
    bootstrap: str
    workdir: Path
    count: int  # events the peers process before they exit (the service runs until stopped)
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    process: subprocess.Popen | None = None

    @property
    def input_topic(self) -> str:
        return f"bench-in-{self.name}"

    @property
    def output_topic(self) -> str:
        return f"bench-out-{self.name}"

    @property
    def label_topic(self) -> str:
        return f"bench-labels-{self.name}"

    @property
    def delayed(self) -> bool:
        return self.path in DELAYED_PATHS

    @property
    def progress_topic(self) -> str:
        """Where an event's work shows as done: its prediction, or (delayed labels) its example."""
        return f"bench-{self.name}.{self.input_topic}.examples" if self.delayed else self.output_topic

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.path}-{self.name}.log"

    @property
    def partitions(self) -> int:
        return WORKER_PARTITIONS if self.path in WORKER_PATHS else 1

    def create_topics(self) -> None:
        connector = create_connector("confluent-kafka", self.bootstrap)
        connector.ensure_topics([self.input_topic], self.partitions)
        connector.ensure_topics([self.output_topic])
        if self.delayed:  # the examples topic too: the reader assigns it before the service starts
            connector.ensure_topics([self.label_topic, self.progress_topic])

    def publish(self, lines: list[bytes]) -> None:
        """Pre-produce the events; with delayed labels, without ``y``, and each label on the label
        topic."""
        if not self.delayed:
            publish(self.bootstrap, self.input_topic, lines, self.partitions)
            return
        events = [json.loads(line) for line in lines]
        labels = [json.dumps({"id": event["id"], "y": event.pop("y")}).encode() for event in events]
        publish(self.bootstrap, self.input_topic, [json.dumps(event).encode() for event in events])
        publish(self.bootstrap, self.label_topic, labels)

    def command(self) -> list[str]:
        path, model, count = self.path, self.model, str(self.count)
        if path.startswith("service"):
            guarantee = "exactly_once" if path.startswith("service-eos") else "at_least_once"
            snapshots = str(self.workdir / f"snapshots-{self.name}")
            config = engine_config(model, snapshots, guarantee=guarantee, instance_id=self.name)
            config["kafka"] = {
                "bootstrap_servers": self.bootstrap,
                "backend": "confluent-kafka" if "-confluent" in path else "kafka-python",
                "input_topic": self.input_topic,
                "predictions_topic": self.output_topic,
                "dead_letter_topic": f"bench-dead-{self.name}",
                "group_id": f"bench-{self.name}",
            }
            if self.delayed:
                config["kafka"]["label_topic"] = self.label_topic
            config_path = self.workdir / f"config-{self.name}.yaml"
            config_path.write_text(yaml.safe_dump(config))
            workers = ["--workers", str(WORKER_PATHS[path])] if path in WORKER_PATHS else []
            return [sys.executable, "-m", "stream", "--log-level", "WARNING", "serve", "-c", str(config_path),
                    *workers]  # fmt: skip
        if path == "peer-kafka-python":
            return [sys.executable, "-m", "benchmarks.peers.kafka_python_app", self.bootstrap,
                    self.input_topic, self.output_topic, model, count]  # fmt: skip
        guarantee = "exactly-once" if path == "peer-quix-eos" else "at-least-once"
        return [sys.executable, "-m", "benchmarks.peers.quix_app", self.bootstrap, self.input_topic,
                self.output_topic, model, count, guarantee, str(COMMIT_INTERVAL)]  # fmt: skip

    def start(self) -> subprocess.Popen:
        with open(self.log_path, "ab") as log:
            command = self.command()
            self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        return self.process

    def _exit(self) -> os.waitid_result | None:
        """How the process exited, or None while it runs; not reaped, so /proc stays readable."""
        assert self.process is not None
        return os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)

    def check_progress(self, progress_at: float, state: str) -> None:
        """Raise if the process exited with an error, or if nothing has progressed for
        ``STALL_SECONDS`` (``progress_at`` is the ``time.monotonic()`` of the last progress)."""
        exited = self._exit()
        if exited is not None and exited.si_status != 0:
            raise RuntimeError(self.failure(f"exited with status {exited.si_status}"))
        stalled = time.monotonic() - progress_at
        if stalled > STALL_SECONDS:
            running = "still running" if exited is None else "exited"
            raise RuntimeError(self.failure(f"no progress for {stalled:.0f} s ({state}; {running})"))

    def failure(self, what: str) -> str:
        """``what`` went wrong, with the end of the process's log."""
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except FileNotFoundError:
            tail = []
        return "\n".join([f"{self.path} ({self.name}): {what}; its log, {self.log_path}, ends:", *tail])

    def stop(self) -> float:
        """Read the process's last peak RSS, SIGTERM it if it still runs, and reap it."""
        assert self.process is not None
        rss = peak_rss_mb(self.process.pid)
        if self._exit() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        return rss

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(60)

    def reader(self, isolation: str) -> Consumer:
        """A librdkafka reader of the output topic: a few microseconds of CPU per record, where
        kafka-python's ~70 would take a good share of the two cores from the process measured."""
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap, "group.id": f"bench-reader-{self.name}",
            "enable.auto.commit": False, "isolation.level": isolation,
        })  # fmt: skip
        consumer.assign([TopicPartition(self.progress_topic, 0, OFFSET_BEGINNING)])
        return consumer

    def producer(self) -> Producer:
        return Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 0})


def take(reader: Consumer, timeout: float) -> list[Any]:
    """The records that have arrived, else wait up to ``timeout`` for one. (``consume(n, timeout)``
    waits for n records or the whole timeout: what it returns would be seen that much late.)"""
    return [m for m in reader.consume(10_000, 0) or reader.consume(1, timeout) if m.error() is None]


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's peak resident memory (VmHWM), in MB, with its children's (a supervisor's
    workers: the sum of their peaks, an upper bound); 0.0 once it has gone.

    Not ``ru_maxrss`` from ``wait4``: Linux carries the parent's high-water mark across fork and
    exec, so a child started by this (large) harness would report the harness's size.
    """
    return _status_mb(pid, "VmHWM:") + sum(_status_mb(child, "VmHWM:") for child in _children(pid))


def _children(pid: int | str) -> list[str]:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return []
    children = []
    for task in tasks:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # the thread has ended
            children += (task / "children").read_text().split()
    return children


def cpu_seconds(pid: int | str = "self") -> float:
    """CPU time (user + system) a process and its live children (a supervisor's workers) have used
    so far, in seconds; 0.0 once it has gone."""
    return _cpu_seconds(pid) + sum(_cpu_seconds(child) for child in _children(pid))


def _cpu_seconds(pid: int | str) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_mb(pid: int | str = "self") -> float:
    """A process's resident memory now (VmRSS), in MB; 0.0 once it has gone."""
    return _status_mb(pid, "VmRSS:")


def _status_mb(pid: int | str, field_name: str) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    for line in status.splitlines():
        if line.startswith(field_name):
            return int(line.split()[1]) / 1024
    return 0.0


def publish(bootstrap: str, topic: str, lines: list[bytes], partitions: int = 1) -> None:
    """Pre-produce events (before any timing starts); over ``partitions`` partitions, in turn."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000})
    for number, line in enumerate(lines):
        while True:
            try:
                if partitions > 1:
                    producer.produce(topic, line, partition=number % partitions)
                else:
                    producer.produce(topic, line)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
