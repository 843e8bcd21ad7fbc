"""The main job end to end on the embedded default (``stream demo``, ``make demo``).

Starts the local Kafka broker, starts the service as its own process, publishes a drifting stream
with recurring concepts (River's Agrawal generator: concept A, then B, then A again, plus a few
malformed events) without labels, and each event's label on the label topic some events later,
as in life; waits until every event is predicted and every label learned, stops the service
cleanly and shows what happened: accuracy over time, the accuracy the service measured as labels
arrived, drifts, the policy's decisions, snapshots, rollbacks, dead letters, and how the same
model did without a drift policy.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from connectors.base import Connector, Source
from kafka_local import BrokerError, LocalBroker
from stream.checkpoint import PartitionId, restore_point
from stream.config import Config
from stream.datasets import as_event, recurring_concepts
from stream.join import Join
from stream.prequential import Engine
from stream.snapshots import SnapshotStore
from stream.step import RecordStep

CONCEPT_NAMES = {0: "A", 2: "B"}
MALFORMED = [b"not json at all", b'{"x": {"salary": NaN}, "y": true}', b'{"y": false}']
WINDOW = 500
LABEL_LAG = 200  # a label is published this many events after its event
# Records published a second: a live stream, which the service keeps up with. (A backlog of
# both topics is read in fetch-sized runs of each, not in time order: see the README.)
PUBLISH_RATE = 1500


def _config(bootstrap: str, output: Path) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]  # fresh topics and group: a shared broker may hold earlier runs
    return {
        "model": {"task": "binary", "pipeline": ["tree.HoeffdingTreeClassifier"]},
        "metrics": {"names": ["Accuracy"], "rolling_window": 1000},
        "drift": {"detector": "drift.ADWIN", "policy": "best", "candidates": 5, "buffer_size": 200},
        "snapshots": {"directory": str(output / "snapshots"), "keep_last": 10},
        "kafka": {
            "bootstrap_servers": bootstrap,
            "input_topic": f"demo-events-{run}",
            "predictions_topic": f"demo-predictions-{run}",
            "dead_letter_topic": f"demo-events-{run}.dead-letter",
            "label_topic": f"demo-labels-{run}",
            "group_id": f"demo-{run}",
        },
        "service": {"instance_id": "demo", "checkpoint_every_events": 1000, "status_every_seconds": 5.0},
        "api": {"port": 0},
    }


def run_demo(output: Path, segment: int = 5000, bootstrap_servers: str | None = None) -> int:
    console = Console(width=None if sys.stdout.isatty() else 110)
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    broker = None
    if bootstrap_servers is None:
        broker = LocalBroker(data_dir=output / "broker")
        with console.status("starting the local Kafka broker (first run fetches its jars)..."):
            started = time.monotonic()
            try:
                broker.start()
            except BrokerError as error:
                console.print(f"[red]the local Kafka broker could not start:[/red] {error}")
                return 1
        bootstrap_servers = broker.bootstrap_servers
        console.print(
            f"[green]✓[/green] Kafka broker at {bootstrap_servers} ({time.monotonic() - started:.1f}s)"
        )
    config = _config(bootstrap_servers, output)
    config_path = output / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    topics = config["kafka"]
    connector = Config.model_validate(config).kafka.connector()
    connector.ensure_topics(
        [topics["input_topic"], topics["label_topic"], *Config.model_validate(config).kafka.output_topics]
    )

    log_path = output / "service.log"
    with open(log_path, "wb") as log:
        service = subprocess.Popen(
            [sys.executable, "-m", "stream", "serve", "-c", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    console.print(f"[green]✓[/green] service started (pid {service.pid}, log {log_path})")
    try:
        if not _wait_until_assigned(log_path, service):
            console.print(f"[red]the service did not join its group; see {log_path}[/red]")
            return 1
        records = list(recurring_concepts(segment, (0, 2, 0)))
        events = [as_event(r) for r in records]
        _publish(console, connector, topics["input_topic"], topics["label_topic"], events)
        predictions = _wait_for(
            console, connector, topics["predictions_topic"], len(events), service, "predicted (committed)"
        )
        examples_topic = Config.model_validate(config).kafka.examples_topic
        _wait_for(console, connector, examples_topic, len(events), service, "labels learned")
        dead_letters = _read_all(connector, topics["dead_letter_topic"])
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            service.wait(60)
        if broker is not None:
            broker.close()
    console.print(f"[green]✓[/green] service stopped cleanly (exit code {service.returncode})")
    if service.returncode != 0 or len(predictions) < len(events):
        console.print(f"[red]the service did not finish; see {log_path}[/red]")
        return 1
    _report(console, config, records, predictions, dead_letters, output)
    return 0


def delayed(events: list[dict]) -> list[tuple[bool, dict]]:
    """``(is_label, record)``: each event without its label, and the label :data:`LABEL_LAG`
    events later (the last ones after the last event), as the demo publishes them.

    >>> events = [{"id": str(n), "x": {}, "y": True} for n in range(2)]
    >>> [(is_label, r["id"]) for is_label, r in delayed(events)]
    [(False, '0'), (False, '1'), (True, '0'), (True, '1')]
    """
    ordered: list[tuple[bool, dict]] = []
    for number, event in enumerate(events):
        ordered.append((False, {name: value for name, value in event.items() if name != "y"}))
        if number >= LABEL_LAG:
            late = events[number - LABEL_LAG]
            ordered.append((True, {"id": late["id"], "y": late["y"]}))
    ordered += [(True, {"id": e["id"], "y": e["y"]}) for e in events[max(0, len(events) - LABEL_LAG) :]]
    return ordered


def _publish(
    console: Console, connector: Connector, topic: str, label_topic: str, events: list[dict]
) -> None:
    records = [
        (label_topic if is_label else topic, json.dumps(r).encode()) for is_label, r in delayed(events)
    ]
    for number, bad in enumerate(MALFORMED, start=1):  # spread through the stream
        records.insert(number * len(records) // (len(MALFORMED) + 1), (topic, bad))
    sink = connector.sink(None)
    columns = (TextColumn("publishing"), BarColumn(), MofNCompleteColumn())
    started = time.monotonic()
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("publish", total=len(records))
        for number, (where, value) in enumerate(records, start=1):
            sink.send(where, value)
            if number % 100 == 0:
                sink.flush()
                progress.update(task, completed=number)
                time.sleep(max(0.0, started + number / PUBLISH_RATE - time.monotonic()))
        sink.flush()
    sink.close()
    console.print(
        f"[green]✓[/green] published {len(events)} events (+{len(MALFORMED)} malformed) to {topic}, and "
        f"their labels to {label_topic}, each {LABEL_LAG} events after its event, at {PUBLISH_RATE} records/s"
    )


def _wait_until_assigned(log_path: Path, service: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Whether the service took its partitions (it says so in its log): the stream it reads from
    then on is live, not a backlog."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and service.poll() is None:
        if "assignment: ['" in log_path.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


def _reader(connector: Connector, topic: str) -> Source:
    """A member of its own new group on ``topic``, reading from the start what is committed."""
    return connector.source([topic], f"demo-reader-{uuid.uuid4().hex[:8]}", "demo-reader")


def _wait_for(
    console: Console, connector: Connector, topic: str, expected: int, service: subprocess.Popen, what: str
) -> list[dict]:
    reader = _reader(connector, topic)
    predictions: list[dict] = []
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn())
    deadline = time.monotonic() + 600
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("predict", total=expected)
        while len(predictions) < expected and time.monotonic() < deadline and service.poll() is None:
            predictions.extend(json.loads(m.value or b"null") for m in reader.poll(0.5, 5000))
            progress.update(task, completed=len(predictions))
    reader.close()
    console.print(f"[green]✓[/green] {what}: {len(predictions)} (read back, read_committed)")
    return predictions


def _read_all(connector: Connector, topic: str, quiet_seconds: float = 3.0) -> list[dict]:
    """Every record of ``topic``: read until nothing more comes for ``quiet_seconds``."""
    reader = _reader(connector, topic)
    records: list[dict] = []
    quiet_since = time.monotonic()
    deadline = quiet_since + 120
    while time.monotonic() - quiet_since < quiet_seconds and time.monotonic() < deadline:
        batch = reader.poll(0.5, 500)
        if batch or not reader.assignment():  # the quiet time counts from joining the group
            records.extend(json.loads(m.value or b"null") for m in batch)
            quiet_since = time.monotonic()
    reader.close()
    return records


def _baseline_accuracy(config: dict, records: list[dict]) -> list[bool]:
    """The same model on the same events and labels in the same order, without any drift policy
    (in-process, the join of ``stream replay``)."""
    baseline_config = Config.model_validate({**config, "drift": {**config["drift"], "policy": "none"}})
    engine = Engine(
        baseline_config, SnapshotStore(Path(config["snapshots"]["directory"]).parent / "baseline")
    )
    step = RecordStep(baseline_config, Join(baseline_config.labels))
    predicted: dict[str, Any] = {}
    for is_label, record in delayed([as_event(r) for r in records]):
        if is_label:
            step.label(engine, record)
        else:
            step(engine, record, "", 0, lambda p: predicted.__setitem__(p["id"], p["y_pred"]))
    return [predicted[r["id"]] == r["y"] for r in records]


def _report(
    console: Console,
    config: dict,
    records: list[dict],
    predictions: list[dict],
    letters: list[dict],
    output: Path,
) -> None:
    by_id = {p["id"]: p for p in predictions}
    correct = [by_id[r["id"]]["y_pred"] == r["y"] for r in records]
    versions = [by_id[r["id"]]["model_version"] for r in records]
    baseline = _baseline_accuracy(config, records)
    topic = config["kafka"]["input_topic"]
    partition = PartitionId(topic, 0)
    scope = partition.scope
    store = SnapshotStore.from_config(Config.model_validate(config).snapshots, scope)
    manifest, state = restore_point(store, {partition.key: 10**12})

    table = Table(title="accuracy over time (windows of 500 events)")
    for column in ("events", "concept", "with policy", "", "no policy", "model", "what happened"):
        table.add_column(column)
    decisions = {d["event"] // WINDOW: d for d in state.decisions}
    for start in range(0, len(records), WINDOW):
        window = slice(start, start + WINDOW)
        accuracy = sum(correct[window]) / len(correct[window])
        base = sum(baseline[window]) / len(baseline[window])
        decision = decisions.get(start // WINDOW)
        note = ""
        if decision:
            note = f"drift: {decision['action']} → {decision['winner']}"
        table.add_row(
            f"{start + 1}-{min(start + WINDOW, len(records))}",
            CONCEPT_NAMES.get(records[start]["concept"], str(records[start]["concept"])),
            f"{accuracy:.3f}",
            "█" * round(accuracy * 10),
            f"{base:.3f}",
            f"v{versions[start]}",
            note,
        )
    console.print(table)

    name = "Accuracy (rolling 1000)"
    arrived = Table(title="accuracy as labels arrived (the service's rolling accuracy, every 500 labels)")
    for column in ("labels learned", "rolling accuracy", ""):
        arrived.add_column(column)
    for point in state.history[::2]:
        arrived.add_row(str(point["event"]), f"{point[name]:.3f}", "█" * round(point[name] * 10))
    console.print(arrived)

    summary = Table(title="summary", show_header=False)
    overall = sum(correct) / len(correct)
    summary.add_row("events predicted", str(len(predictions)))
    summary.add_row("labels learned", f"{state.labelled}, each {LABEL_LAG} events after its event")
    summary.add_row(
        "dead letters", f"{len(letters)}: " + "; ".join(sorted({letter["error"][:40] for letter in letters}))
    )
    summary.add_row("accuracy, with policy 'best'", f"{overall:.4f}")
    summary.add_row("accuracy, no drift policy", f"{sum(baseline) / len(baseline):.4f}")
    summary.add_row("drifts detected", str(state.drifts))
    summary.add_row("snapshots taken", str(state.snapshots))
    summary.add_row("rollbacks", str(state.rollbacks))
    summary.add_row("resets", str(state.resets))
    summary.add_row("final model", f"v{state.model_version}, shutdown snapshot {manifest.id}")
    console.print(summary)
    engine_summary = Engine(Config.model_validate(config), store, state).summary().model_dump()
    result = {
        "accuracy": overall,
        "baseline_accuracy": sum(baseline) / len(baseline),
        "dead_letters": len(letters),
    }
    (output / "summary.json").write_text(json.dumps({**result, **engine_summary}, indent=2))
    directory = config["snapshots"]["directory"]
    console.print(
        "\nQuery the snapshots:\n"
        f"  .venv/bin/stream snapshots list --dir {directory} --scope {scope}\n"
        f"  .venv/bin/stream snapshots list --dir {directory} --scope {scope} --reason drift\n"
        f"  .venv/bin/stream snapshots show {manifest.id} --dir {directory} --scope {scope}\n"
        f"Everything is in {output}/ (config.yaml, service.log, snapshots/, summary.json)."
    )
