"""The benchmark: the same events and models through every path, side by side, in one run.

    python -m benchmarks.run [--events 50000] [--repeats 3] [--models lr,ht,arf] [--out DIR]

Paths, for each model (``benchmarks/models.py``), on the same pre-generated Agrawal events
(concepts A, B, A; fixed seed; ARF gets a tenth of the events, it is ~15x slower):

  bare                 predict_proba_one, metric.update, learn_one in one process: the limit
  replay               the engine from JSON lines (decode, validate, predict, learn, encode)
  service-eos          ``stream serve``, exactly_once, events pre-produced to the local broker
  service-alos         ``stream serve``, at_least_once
  peer-kafka-python    a plain kafka-python consume/predict/produce/learn script (at-least-once)
  peer-quix-eos        the model in a Quix Streams application, processing_guarantee exactly-once
  peer-quix-alos       the same, at-least-once

Service and peer rates are all N events over the time from the first prediction being produced
(seen by a ``read_uncommitted`` reader) to the last one being committed (seen by a
``read_committed`` reader): process start-up and the group join are left out, and transactional
paths, whose output appears in bursts at each commit, are timed fairly. The service and Quix both
commit at least every second here, so the wait for the last commit is bounded alike.
The service runs with drift policy ``none`` (detector on, no switches) so every path learns the
same model. Peak RSS is each process's VmHWM (Kafka paths: sampled every 0.2 s while it runs and
at the end; in-process paths: read by their fresh interpreter). Each figure is the median of
``--repeats`` runs; ratios are events/s over the bare loop's in the same run. Writes
``results.json`` and ``results.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kafka
import river
import yaml
from kafka import KafkaConsumer, KafkaProducer
from river import metrics

from benchmarks.models import FACTORIES, LABELS, MODELS
from connectors.local_broker import REPO_ROOT, LocalBroker
from stream.config import Config
from stream.datasets import as_event, recurring_concepts
from stream.events import decode_event
from stream.prequential import Engine
from stream.replay import to_json
from stream.snapshots import SnapshotStore

KAFKA_PATHS = ("service-eos", "service-alos", "peer-kafka-python", "peer-quix-eos", "peer-quix-alos")


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's peak resident memory (VmHWM), in MB; 0.0 once it has gone.

    Not ``ru_maxrss`` from ``wait4``: Linux carries the parent's high-water mark across fork and
    exec, so a child started by this (large) harness would report the harness's size.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def engine_config(model: str, snapshots: str, **service: Any) -> dict[str, Any]:
    return {
        "model": {"task": "binary", "factory": f"benchmarks.models:{FACTORIES[model]}"},
        "drift": {"policy": "none"},
        "snapshots": {"directory": snapshots},
        "api": {"enabled": False},
        # Commits at least every second, like the Quix peer below: the last commit ends the timing.
        "service": {"status_every_seconds": 30.0, "checkpoint_every_seconds": 1.0, **service},
    }


# -- in-process paths, each in a fresh interpreter (spawn, not fork) so its peak RSS is its own ----


def _bare(model: str, events: list[dict]) -> tuple[float, float]:
    estimator, metric = MODELS[model](), metrics.Accuracy()
    started = time.perf_counter()
    for event in events:
        x, y = event["x"], event["y"]
        proba = estimator.predict_proba_one(x)
        y_pred = max(proba, key=proba.get) if proba else None
        if y_pred is not None:
            metric.update(y, y_pred)
        estimator.learn_one(x, y)
    return len(events) / (time.perf_counter() - started), peak_rss_mb()


def _replay(model: str, lines: list[bytes]) -> tuple[float, float]:
    config = Config.model_validate(engine_config(model, tempfile.mkdtemp(prefix="bench-")))
    engine = Engine(config, SnapshotStore(config.snapshots.directory))
    started = time.perf_counter()
    for line in lines:
        to_json(engine.process(decode_event(line, "binary")))
    return len(lines) / (time.perf_counter() - started), peak_rss_mb()


def in_child(function: Any, *args: Any) -> tuple[float, float]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


# -- Kafka paths -------------------------------------------------------------------------------


def _publish(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    for line in lines:
        producer.send(topic, line)
    producer.flush()
    producer.close()


def run_kafka_path(
    path: str, model: str, lines: list[bytes], bootstrap: str, workdir: Path
) -> tuple[float, float]:
    run = uuid.uuid4().hex[:8]
    input_topic, output_topic = f"bench-in-{run}", f"bench-out-{run}"
    _publish(bootstrap, input_topic, lines)
    if path.startswith("service"):
        guarantee = "exactly_once" if path == "service-eos" else "at_least_once"
        config = engine_config(model, str(workdir / f"snapshots-{run}"), guarantee=guarantee, instance_id=run)
        config["kafka"] = {"bootstrap_servers": bootstrap, "input_topic": input_topic,
                           "predictions_topic": output_topic, "dead_letter_topic": f"bench-dead-{run}",
                           "group_id": f"bench-{run}"}  # fmt: skip
        config_path = workdir / f"config-{run}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "stream", "--log-level", "WARNING", "serve", "-c", str(config_path)]
    elif path == "peer-kafka-python":
        command = [sys.executable, "-m", "benchmarks.peers.kafka_python_app", bootstrap, input_topic,
                   output_topic, model, str(len(lines))]  # fmt: skip
    else:
        guarantee = "exactly-once" if path == "peer-quix-eos" else "at-least-once"
        command = [sys.executable, "-m", "benchmarks.peers.quix_app", bootstrap, input_topic,
                   output_topic, model, str(len(lines)), guarantee]  # fmt: skip

    def reader(isolation: str) -> KafkaConsumer:
        return KafkaConsumer(
            output_topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            isolation_level=isolation, fetch_max_bytes=32 * 1024 * 1024,
        )  # fmt: skip

    produced, committed = reader("read_uncommitted"), reader("read_committed")
    with open(workdir / f"{path}-{run}.log", "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    seen, first_at, rss = 0, 0.0, 0.0
    deadline = time.monotonic() + 900
    try:
        while not first_at and time.monotonic() < deadline:
            rss = max(rss, peak_rss_mb(process.pid))  # sampled while it runs (it may exit by itself)
            if any(produced.poll(timeout_ms=20, max_records=1).values()):
                first_at = time.monotonic()
            elif _failed(process.pid):
                raise RuntimeError(f"{path} failed; see {log.name}")
        while seen < len(lines) and time.monotonic() < deadline:
            rss = max(rss, peak_rss_mb(process.pid))
            if _failed(process.pid):
                raise RuntimeError(f"{path} failed; see {log.name}")
            seen += sum(len(records) for records in committed.poll(timeout_ms=200).values())
        last_at = time.monotonic()
    finally:
        rss = max(rss, _stop(process))
        produced.close()
        committed.close()
    if seen < len(lines):
        raise RuntimeError(f"{path}: only {seen} of {len(lines)} predictions within the time limit")
    return len(lines) / (last_at - first_at), rss


def _failed(pid: int) -> bool:
    """True if the child exited with an error (not reaped yet, so its /proc entry stays readable)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None and info.si_status != 0


def _stop(process: subprocess.Popen) -> float:
    """Read the child's last peak RSS, SIGTERM it if it still runs, and reap it."""
    rss = peak_rss_mb(process.pid)
    if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        process.send_signal(signal.SIGTERM)
    process.wait(60)
    return rss


# -- the run -----------------------------------------------------------------------------------


def measure(models: list[str], events: int, repeats: int, workdir: Path) -> list[dict[str, Any]]:
    results = []
    with LocalBroker(data_dir=workdir / "broker") as broker:
        for model in models:
            count = events // 10 if model == "arf" else events
            records = [as_event(r) for r in recurring_concepts(count // 3 + 1, (0, 2, 0), seed=42)][:count]
            lines = [json.dumps(record).encode() for record in records]
            runs: dict[str, list[tuple[float, float]]] = {}
            for _ in range(repeats):
                runs.setdefault("bare", []).append(in_child(_bare, model, records))
                runs.setdefault("replay", []).append(in_child(_replay, model, lines))
                for path in KAFKA_PATHS:
                    runs.setdefault(path, []).append(
                        run_kafka_path(path, model, lines, broker.bootstrap_servers, workdir)
                    )
            bare = statistics.median(rate for rate, _ in runs["bare"])
            for path, measured in runs.items():
                rate = statistics.median(r for r, _ in measured)
                results.append({
                    "model": LABELS[model], "path": path, "events": count, "events_per_second": round(rate),
                    "ratio_to_bare": round(rate / bare, 3),
                    "peak_rss_mb": round(statistics.median(m for _, m in measured), 1),
                    "runs": [round(r) for r, _ in measured],
                })  # fmt: skip
                print(f"{LABELS[model]:34} {path:18} {rate:9.0f}/s  x{rate / bare:5.2f}  "
                      f"{results[-1]['peak_rss_mb']:7.1f} MB", flush=True)  # fmt: skip
    return results


def machine() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "river": river.__version__,
        "kafka_python": kafka.__version__,
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| model | path | events | events/s | ratio to bare | peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        model = r["model"].replace("|", "\\|")
        rows.append(f"| {model} | {r['path']} | {r['events']} | {r['events_per_second']} | "
                    f"{r['ratio_to_bare']:.2f} | {r['peak_rss_mb']} |")  # fmt: skip
    return "\n".join(rows)


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in results))
    paths = list(dict.fromkeys(r["path"] for r in results))
    width = 0.8 / len(paths)
    figure, axis = plt.subplots(figsize=(10, 4.5))
    for index, name in enumerate(paths):
        values = [
            next(r["ratio_to_bare"] for r in results if r["model"] == m and r["path"] == name) for m in models
        ]
        axis.bar([i + index * width for i in range(len(models))], values, width, label=name)
    axis.set_xticks([i + width * (len(paths) - 1) / 2 for i in range(len(models))], models)
    axis.set_ylabel("events/s relative to the bare River loop")
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.legend(fontsize=8)
    axis.set_title("throughput, same events and models (median of runs)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="lr,ht,arf")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    models = args.models.split(",")
    unknown = set(models) - MODELS.keys()
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(MODELS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        results = measure(models, args.events, args.repeats, Path(workdir))
    report = {"machine": machine(), "events": args.events, "repeats": args.repeats, "results": results}
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    chart(results, args.out / "results.png")
    print(f"\n{json.dumps(report['machine'])}\n\n{table(results)}\n")
    print(f"wrote {args.out}/results.json and results.png")


if __name__ == "__main__":
    main()
