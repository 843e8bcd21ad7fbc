"""The benchmark: the same events and models through every path, side by side, in one run.

    python -m benchmarks.run [--events 100000] [--repeats 3] [--models lr,ht,arf] [--paths ...]

Paths, for each model (``benchmarks/models.py``), on the same pre-generated Agrawal events
(concepts A, B, A; fixed seed; ARF gets a tenth of the events, it is ~15x slower):

  bare                 predict_proba_one, metric.update, learn_one in one process: the limit
  replay               the engine from JSON lines (decode, validate, predict, learn, encode)
  service-eos          ``stream serve``, exactly_once, kafka-python backend, on the local broker
  service-alos         ``stream serve``, at_least_once, kafka-python backend
  service-*-confluent  the same on the confluent-kafka backend (``kafka.backend``)
  service-eos-delayed-confluent
                       delayed labels: the events without ``y``, each label on the label topic;
                       timed to the last example learned (the examples topic), throughput only
  service-eos-confluent-workers1 / -workers2
                       ``stream serve --workers 1`` / ``--workers 2`` (a supervisor and two worker
                       processes) on a 4-partition input topic, the events spread evenly over it;
                       throughput only, the 2-worker path also as a ratio to the 1-worker one
  peer-kafka-python    a plain kafka-python consume/predict/produce/learn script (at-least-once)
  peer-quix-eos        the model in a Quix Streams application, processing_guarantee exactly-once
  peer-quix-alos       the same, at-least-once

First, ``--warm-up-events`` go through the fresh broker, not reported (its JVM compiles its hot
code as records come: whichever path ran first was measured against a slower broker). Then four
measurements:

- Throughput: events pre-produced; N events over the time from the first prediction being
  produced (seen by a ``read_uncommitted`` reader) to the last one being committed (seen by a
  ``read_committed`` reader): start-up and the group join are left out, and transactional paths,
  whose output appears in bursts at each commit, are timed fairly. The service and Quix commit
  every 0.2 s (the service's default; Quix's is 5 s). Medians of ``--repeats``; ratios are
  events/s over the bare loop's in the same run. Peak RSS is each process's VmHWM. Beside it, the
  CPU the process and the broker used over the same span, per event: on two cores shared by the
  broker, the harness and the process, events/s moves with what else runs, CPU per event less.
- Latency: each Kafka path offered a fixed load, half the best service path's median
  throughput for that model, for ``--latency-seconds``; p50/p99 from produce to the prediction
  seen by a ``read_committed`` reader, after 200 warm-up events; medians of ``--repeats`` runs,
  taken in rounds (each path once per round) after one unreported run of
  ``--latency-warm-up-seconds`` at the same load (the broker warms up to small requests too).
- Recovery (service paths): under the same load, SIGKILL and restart at once; seconds to the
  first prediction of the new process that a ``read_committed`` reader sees; median of runs,
  one per round.
- Memory: the best service path with the linear model (fixed size, so any growth is the
  service's) over ``--memory-events`` events; resident memory sampled every 0.5 s.

The service runs with drift policy ``none`` (detector on, no switches) so every path learns the
same model. Writes ``results.json`` and ``results.png`` to ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import confluent_kafka
import kafka
import river
from river import metrics

from benchmarks import REPO_ROOT
from benchmarks.engine import concept_records
from benchmarks.latency import measure_latency, measure_memory, measure_recovery
from benchmarks.models import LABELS, MODELS
from benchmarks.paths import (
    DELAYED_PATHS,
    KAFKA_PATHS,
    WORKER_PARTITIONS,
    WORKER_PATHS,
    Run,
    cpu_seconds,
    engine_config,
    peak_rss_mb,
    take,
)
from kafka_local import LocalBroker
from stream.config import Config
from stream.datasets import as_event, recurring_concepts
from stream.events import decode_event, encode_record
from stream.prequential import Engine
from stream.snapshots import SnapshotStore

PATHS = ("bare", "replay", *KAFKA_PATHS)
THROUGHPUT_ONLY = (*DELAYED_PATHS, *WORKER_PATHS)
# What warms the fresh broker up: transactions, read_committed consumers and group commits, as
# every path uses them, at a good rate.
WARM_UP_PATH = "service-eos-confluent"
SERVICE_PATHS = tuple(p for p in KAFKA_PATHS if p.startswith("service") and p not in THROUGHPUT_ONLY)


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
        encode_record(engine.process(decode_event(line, "binary")))
    return len(lines) / (time.perf_counter() - started), peak_rss_mb()


def in_child(function: Any, *args: Any) -> tuple[float, float]:
    # An executor, not a Pool: if the child dies, a Pool waits for its result forever.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as executor:
        return executor.submit(function, *args).result()


# -- Kafka paths -------------------------------------------------------------------------------


class Throughput(NamedTuple):
    """One throughput run of a Kafka path."""

    events_per_second: float
    peak_rss_mb: float
    cpu_us_per_event: float  # the process's CPU (user + system) over the timed span, per event
    broker_cpu_us_per_event: float  # the broker's, over the same span


def throughput(run: Run, lines: list[bytes], broker_pid: int) -> Throughput:
    """Events/s from the first prediction produced to the last committed, peak RSS, and the CPU
    the process and the broker used over that span, per event: on two cores shared by the broker,
    the harness and the process, events/s moves with what else runs; CPU per event much less."""
    run.create_topics()
    run.publish(lines)
    produced, committed = run.reader("read_uncommitted"), run.reader("read_committed")
    process = run.start()
    seen, first_at, rss = 0, 0.0, 0.0
    progress_at = time.monotonic()  # a path that stops making progress fails the run, it never hangs it
    try:
        while not first_at:
            rss = max(rss, peak_rss_mb(process.pid))  # sampled while it runs (it may exit by itself)
            if take(produced, 0.02):
                first_at = time.monotonic()
                cpu_at_first, broker_cpu_at_first = cpu_seconds(process.pid), cpu_seconds(broker_pid)
            run.check_progress(progress_at, "no prediction yet")
        while seen < len(lines):
            rss = max(rss, peak_rss_mb(process.pid))
            arrived = len(take(committed, 0.2))
            if arrived:
                seen, progress_at = seen + arrived, time.monotonic()
                # Read as the records arrive: a peer exits once it has processed them all.
                cpu, broker_cpu = cpu_seconds(process.pid), cpu_seconds(broker_pid)
            run.check_progress(progress_at, f"{seen} of {len(lines)} predictions committed")
        last_at = time.monotonic()
    finally:
        rss = max(rss, run.stop())
        produced.close()
        committed.close()
    per_event = 1e6 / len(lines)
    return Throughput(
        len(lines) / (last_at - first_at), rss,
        max(cpu - cpu_at_first, 0.0) * per_event, (broker_cpu - broker_cpu_at_first) * per_event,
    )  # fmt: skip


# -- the run -----------------------------------------------------------------------------------


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"results": [], "latency": [], "recovery": [], "memory": {}}
    with LocalBroker(data_dir=workdir / "broker") as broker:
        if args.warm_up_events and any(path in KAFKA_PATHS for path in args.paths):
            report["warm_up"] = _warm_up(args.warm_up_events, broker, workdir)
        for model in args.models:
            count = args.events // 10 if model == "arf" else args.events
            records = concept_records(count)
            rows = _throughputs(args, model, records, broker, workdir)
            report["results"] += rows
            services = [r["events_per_second"] for r in rows if r["path"] in SERVICE_PATHS]
            if services and args.latency_seconds:
                offered = 0.5 * max(services)
                if args.latency_warm_up_seconds:
                    run = Run(WARM_UP_PATH, model, broker.bootstrap_servers, workdir, 0)
                    warm_up = _latency_warm_up(run, records, offered, args.latency_warm_up_seconds)
                    report.setdefault("latency_warm_up", []).append(warm_up)
                latency, recovery = _latencies(args, model, records, offered, broker, workdir)
                report["latency"] += latency
                report["recovery"] += recovery
        if args.memory_events:
            report["memory"] = _memory(args, report["results"], broker.bootstrap_servers, workdir)
    return report


def _warm_up(events: int, broker: LocalBroker, workdir: Path) -> dict[str, Any]:
    """One run through the fresh broker, not reported. Its JVM compiles its hot code as records
    come: in the first runs it used 3-5 times the CPU per event it used later (64-92 us against
    16-30), on the two cores the process measured shares with it, so whichever path ran first was
    measured against a slower broker."""
    lines = [json.dumps(record).encode() for record in concept_records(events)]
    measured = throughput(Run(WARM_UP_PATH, "lr", broker.bootstrap_servers, workdir, len(lines)), lines,
                          broker.process.pid)  # fmt: skip
    print(f"warm-up, not reported: {len(lines)} events through {WARM_UP_PATH} at "
          f"{measured.events_per_second:.0f}/s, the broker's CPU {measured.broker_cpu_us_per_event:.1f} us "
          "per event", flush=True)  # fmt: skip
    rate, broker_cpu = round(measured.events_per_second), round(measured.broker_cpu_us_per_event, 1)
    return {"path": WARM_UP_PATH, "events": len(lines), "events_per_second": rate,
            "broker_cpu_us_per_event": broker_cpu}  # fmt: skip


def _throughputs(
    args: argparse.Namespace, model: str, records: list[dict], broker: LocalBroker, workdir: Path
) -> list[dict[str, Any]]:
    lines = [json.dumps(record).encode() for record in records]
    runs: dict[str, list[tuple[float, float]]] = {}
    cpu: dict[str, list[tuple[float, float]]] = {}  # Kafka paths: the process's and the broker's, per event
    for _ in range(args.repeats):
        runs.setdefault("bare", []).append(in_child(_bare, model, records))  # every ratio's base
        if "replay" in args.paths:
            runs.setdefault("replay", []).append(in_child(_replay, model, lines))
        for path in (p for p in KAFKA_PATHS if p in args.paths):
            run = Run(path, model, broker.bootstrap_servers, workdir, len(lines))
            measured = throughput(run, lines, broker.process.pid)
            runs.setdefault(path, []).append(measured[:2])
            cpu.setdefault(path, []).append(measured[2:])
            print(f"  {LABELS[model]} {path}: {measured.events_per_second:.0f}/s, CPU per event "
                  f"{measured.cpu_us_per_event:.1f} us (broker {measured.broker_cpu_us_per_event:.1f} us)",
                  flush=True)  # fmt: skip
    bare = statistics.median(rate for rate, _ in runs["bare"])
    rows = []
    for path, measured in runs.items():
        rate = statistics.median(r for r, _ in measured)
        rss = statistics.median(m for _, m in measured)
        row: dict[str, Any] = {
            "model": LABELS[model], "path": path, "events": len(lines), "events_per_second": round(rate),
            "ratio_to_bare": round(rate / bare, 3), "peak_rss_mb": round(rss, 1),
            "runs": [round(r) for r, _ in measured],
        }  # fmt: skip
        if path in cpu:
            row["cpu_us_per_event"] = round(statistics.median(c for c, _ in cpu[path]), 1)
            row["broker_cpu_us_per_event"] = round(statistics.median(b for _, b in cpu[path]), 1)
        rows.append(row)
        print(f"{LABELS[model]:34} {path:22} {rate:9.0f}/s  x{rate / bare:5.2f}  {rss:7.1f} MB", flush=True)
    one_worker = next((r["events_per_second"] for r in rows if WORKER_PATHS.get(r["path"]) == 1), None)
    for row in (r for r in rows if WORKER_PATHS.get(r["path"], 1) > 1 and one_worker):
        row["ratio_to_one_worker"] = round(row["events_per_second"] / one_worker, 3)  # type: ignore[operator]
        print(f"{LABELS[model]:34} {row['path']}: x{row['ratio_to_one_worker']:.2f} the events/s of one "
              f"worker on the same {WORKER_PARTITIONS} partitions ({os.cpu_count()} cores, shared with "
              "the broker and the harness)", flush=True)  # fmt: skip
    return rows


def _latency_warm_up(run: Run, records: list[dict], offered: float, seconds: float) -> dict[str, Any]:
    """One latency run (of :data:`WARM_UP_PATH`) at ``offered`` events/s, not reported. The broker's
    JVM compiles the code of small produce and fetch requests only when it gets them: the
    throughput warm-up (large batches of pre-produced events) leaves it cold, and whichever path
    was measured first at a fixed load had a p50 five to ten times the later ones (measured: 1,519
    and 1,168 ms for the service's first two runs against 126 and 125 ms for its next two)."""
    measured = measure_latency(run, records, offered, seconds)
    print(f"latency warm-up, not reported: {run.path} at {measured['offered_per_second']}/s for "
          f"{seconds:g} s: p50 {measured['p50_ms']}, p99 {measured['p99_ms']}", flush=True)  # fmt: skip
    return {"model": LABELS[run.model], "path": run.path, "seconds": seconds, **measured}


def _latencies(
    args: argparse.Namespace,
    model: str,
    records: list[dict],
    offered: float,
    broker: LocalBroker,
    workdir: Path,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Latency at ``offered`` events/s of each Kafka path; for the service, recovery from SIGKILL
    at that load too.

    ``--repeats`` rounds, each path once per round, so that what changes over the run (the broker
    warming, other work on the machine) falls on every path alike; the medians are reported (one
    broker hiccup of 200 ms, a JVM pause say, sets a whole run's p99 at this load), with every
    run's figures kept in the JSON.
    """
    paths = [p for p in KAFKA_PATHS if p in args.paths and p not in THROUGHPUT_ONLY]
    runs: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
    kills: dict[str, list[float]] = {path: [] for path in paths if path in SERVICE_PATHS}
    bootstrap = broker.bootstrap_servers
    for _ in range(args.repeats):
        for path in paths:
            run = Run(path, model, bootstrap, workdir, 0)
            runs[path].append(measure_latency(run, records, offered, args.latency_seconds))
            if path in kills:
                killed = Run(path, model, bootstrap, workdir, 0)
                kills[path].append(measure_recovery(killed, records, offered))
    latency, recovery = [], []
    for path in paths:
        label, names = f"{LABELS[model]:34} {path:22}", {"model": LABELS[model], "path": path}
        row = {
            "offered_per_second": runs[path][0]["offered_per_second"],
            **{key: statistics.median(r[key] for r in runs[path]) for key in ("p50_ms", "p99_ms", "max_ms")},
            "missing": max(r["missing"] for r in runs[path]),
            "runs": runs[path],
        }
        print(f"{label} at {row['offered_per_second']}/s: p50 {row['p50_ms']}, p99 {row['p99_ms']}",
              flush=True)  # fmt: skip
        latency.append({**names, **row})
        if path in kills:
            seconds = statistics.median(kills[path])
            print(f"{label} SIGKILL to a new prediction: {seconds} s", flush=True)
            recovery.append({**names, "offered_per_second": round(offered), "seconds": seconds,
                             "runs": kills[path]})  # fmt: skip
    return latency, recovery


def _memory(args: argparse.Namespace, results: list[dict], bootstrap: str, workdir: Path) -> dict[str, Any]:
    """The linear model (fixed size: any growth is the service's) on the fastest service path."""
    linear = [r for r in results if r["path"] in SERVICE_PATHS and r["model"] == LABELS["lr"]]
    path = max(linear, key=lambda r: r["events_per_second"])["path"] if linear else "service-eos-confluent"
    records = [as_event(r) for r in recurring_concepts(20_000, (0, 2, 0), seed=7)]
    memory = {"path": path, "model": LABELS["lr"]}
    memory.update(measure_memory(Run(path, "lr", bootstrap, workdir, 0), records, args.memory_events))
    print(f"memory, {path}, {memory['events']} events: {memory['rss_mb_at_10_percent']} MB at 10%, "
          f"{memory['rss_mb_at_end']} MB at the end", flush=True)  # fmt: skip
    return memory


def machine() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "river": river.__version__,
        "kafka_python": kafka.__version__,
        "confluent_kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
    }


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def tables(report: dict[str, Any]) -> str:
    latency = {(r["model"], r["path"]): r for r in report["latency"]}
    recovery = {(r["model"], r["path"]): r for r in report["recovery"]}
    rows = [
        "| model | path | events/s | ratio to bare | p50 / p99 latency (ms) at offered load | "
        "SIGKILL to new prediction (s) | CPU us per event: process / broker | peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        key = (r["model"], r["path"])
        lat = latency.get(key)
        lat_text = f"{lat['p50_ms']} / {lat['p99_ms']} at {lat['offered_per_second']}/s" if lat else ""
        if lat and lat["missing"]:
            lat_text += f" ({lat['missing']} late)"
        rec = recovery.get(key)
        rec_text = rec["seconds"] if rec else ""
        scaling = f" (x{r['ratio_to_one_worker']:.2f} of 1 worker)" if "ratio_to_one_worker" in r else ""
        cpu = f"{r['cpu_us_per_event']} / {r['broker_cpu_us_per_event']}" if "cpu_us_per_event" in r else ""
        rows.append(f"| {_escape(r['model'])} | {r['path']} | {r['events_per_second']}{scaling} | "
                    f"{r['ratio_to_bare']:.2f} | {lat_text} | {rec_text} | {cpu} | "
                    f"{r['peak_rss_mb']} |")  # fmt: skip
    memory = report["memory"]
    if memory:
        rows.append("")
        rows.append(f"Memory, {memory['path']} with {_escape(memory['model'])}, "
                    f"{memory['events']:,} events in {memory['seconds']} s: "
                    f"RSS {memory['rss_mb_at_10_percent']} MB at 10%, "
                    f"{memory['rss_mb_at_50_percent']} MB at 50%, {memory['rss_mb_at_end']} MB at the end "
                    f"({memory['growth_mb_second_half']:+} MB over the second half); "
                    f"peak {memory['peak_rss_mb']} MB.")  # fmt: skip
    return "\n".join(rows)


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    models = list(dict.fromkeys(r["model"] for r in results))
    paths = list(dict.fromkeys(r["path"] for r in results))
    width = 0.8 / len(paths)
    panels = 2 if report["latency"] else 1
    figure, axes = plt.subplots(panels, 1, figsize=(11, 4.5 * panels), squeeze=False)
    axis = axes[0][0]
    for index, name in enumerate(paths):
        values = [
            next((r["ratio_to_bare"] for r in results if r["model"] == m and r["path"] == name), 0)
            for m in models
        ]
        axis.bar([i + index * width for i in range(len(models))], values, width, label=name)
    axis.set_xticks([i + width * (len(paths) - 1) / 2 for i in range(len(models))], models)
    axis.set_ylabel("events/s relative to the bare River loop")
    axis.set_ylim(0, 1.35)  # room for the legend above the bars
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.legend(fontsize=7, ncol=3)
    axis.set_title("throughput, same events and models (median of runs)")
    if report["latency"]:
        axis = axes[1][0]
        latency_paths = list(dict.fromkeys(r["path"] for r in report["latency"]))
        width = 0.8 / len(latency_paths)
        for index, name in enumerate(latency_paths):
            values = [
                next((r["p99_ms"] for r in report["latency"] if r["model"] == m and r["path"] == name), 0)
                for m in models
            ]
            axis.bar([i + index * width for i in range(len(models))], values, width, label=name)
        axis.set_xticks([i + width * (len(latency_paths) - 1) / 2 for i in range(len(models))], models)
        axis.set_yscale("log")
        axis.set_ylabel("p99 ms, produce to committed prediction")
        axis.axhline(50, color="red", linewidth=0.8)
        axis.legend(fontsize=7, ncol=3)
        axis.set_title("latency at half the best service throughput (log scale; red: 50 ms)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000, help="per throughput run (ARF: a tenth)")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per path; medians reported")
    parser.add_argument("--models", default="lr,ht,arf", type=lambda text: text.split(","))
    parser.add_argument("--paths", default=",".join(PATHS), type=lambda text: text.split(","),
                        help="which paths to run (bare always runs)")  # fmt: skip
    parser.add_argument(
        "--latency-seconds", type=float, default=5.0, help="per run, path and model; 0 = skip"
    )
    parser.add_argument(
        "--latency-warm-up-seconds", type=float, default=20.0,
        help="per model, an unreported latency run first (the broker warms up to small requests); 0 = none",
    )  # fmt: skip
    parser.add_argument("--memory-events", type=int, default=1_000_000, help="0 = skip the memory run")
    parser.add_argument(
        "--warm-up-events", type=int, default=200_000,
        help="through the fresh broker before anything is measured (its JVM compiles as it goes); 0 = none",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if unknown := set(args.models) - MODELS.keys():
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(MODELS)}")
    if unknown := set(args.paths) - set(PATHS):
        parser.error(f"unknown paths {sorted(unknown)}; choose from {', '.join(PATHS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        measured = measure(args, Path(workdir))
    report = {"machine": machine(), "events": args.events, "repeats": args.repeats, **measured,
              "minutes": round((time.monotonic() - started) / 60, 1)}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    chart(report, args.out / "results.png")
    print(f"\n{json.dumps(report['machine'])}\n\n{tables(report)}\n")
    print(f"wrote {args.out}/results.json and results.png")


if __name__ == "__main__":
    main()
