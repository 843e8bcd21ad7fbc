"""Latency at a fixed offered load, recovery after SIGKILL, and memory over a long run.

Each takes a :class:`benchmarks.paths.Run` on fresh topics. Latency is from the moment the
harness produces an event to the moment a ``read_committed`` reader sees its prediction (so in
exactly-once paths it includes the wait for the transaction's commit).
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from benchmarks.paths import Run, peak_rss_mb, publish, rss_mb, take

WARMUP_EVENTS = 200


def _events(records: list[dict], count: int, prefix: str) -> list[tuple[str, bytes]]:
    """``count`` events cycling through ``records``, each with a unique id: (id, JSON)."""
    events = []
    for i in range(count):
        event_id = f"{prefix}-{i}"
        events.append((event_id, orjson.dumps({**records[i % len(records)], "id": event_id})))
    return events


def _read_ids(reader: Any, seen: dict[str, float], timeout: float) -> None:
    for message in take(reader, timeout):
        seen.setdefault(orjson.loads(message.value())["id"], time.time())


@contextlib.contextmanager
def _no_pauses_here() -> Iterator[None]:
    """The harness's own garbage collection off while it stamps times: a full collection of its
    heap takes 50-80 ms (measured), which it would add to the latency of whatever it reads next."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _warm_up(run: Run, producer: Any, reader: Any, records: list[dict]) -> None:
    """Start-up, group join and the model's first events happen before anything is measured."""
    for _, line in _events(records, WARMUP_EVENTS, "warm"):
        producer.produce(run.input_topic, line)
    producer.flush(30)
    seen: dict[str, float] = {}
    started = time.monotonic()
    while len(seen) < WARMUP_EVENTS:
        run.check_progress(started, f"{len(seen)} of {WARMUP_EVENTS} warm-up predictions")
        _read_ids(reader, seen, 0.1)


def _offer(
    run: Run, producer: Any, events: list[tuple[str, bytes]], rate: float, on_tick: Callable[[], bool]
) -> dict[str, float]:
    """Produce ``events`` at ``rate`` per second until done or ``on_tick`` returns True; return
    when each was sent, by id. ``on_tick`` runs between sends (about every millisecond)."""
    sent: dict[str, float] = {}
    started = time.perf_counter()
    index = 0
    while index < len(events):
        due = min(len(events), int((time.perf_counter() - started) * rate) + 1)
        while index < due:
            event_id, line = events[index]
            sent[event_id] = time.time()
            producer.produce(run.input_topic, line)
            index += 1
        producer.poll(0)
        if on_tick():
            break
    producer.flush(30)
    return sent


def measure_latency(run: Run, records: list[dict], rate: float, seconds: float) -> dict[str, Any]:
    """p50/p99 from produce to committed prediction, offering ``rate`` events/s for ``seconds``."""
    events = _events(records, int(rate * seconds), "lat")
    run.count = WARMUP_EVENTS + len(events)
    run.create_topics()
    run.start()
    producer, reader = run.producer(), run.reader("read_committed")
    seen: dict[str, float] = {}
    try:
        _warm_up(run, producer, reader, records)
        with _no_pauses_here():
            sent = _offer(run, producer, events, rate, lambda: _read_ids(reader, seen, 0.001) or False)
            drain = time.monotonic() + 30
            while len(seen) < len(sent) and time.monotonic() < drain:
                _read_ids(reader, seen, 0.05)
    finally:
        run.stop()
        reader.close()
    latencies = sorted((seen[key] - at) * 1000 for key, at in sent.items() if key in seen)
    if not latencies:
        raise RuntimeError(run.failure(f"no prediction arrived at {rate:.0f} events/s"))
    return {
        "offered_per_second": round(rate),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)], 1),
        "max_ms": round(latencies[-1], 1),
        "missing": len(sent) - len(latencies),  # not seen within 30 s of the last send
    }


def measure_recovery(run: Run, records: list[dict], rate: float, before_kill: float = 5.0) -> float:
    """Seconds from SIGKILL of a service under ``rate`` events/s, restarted at once (as a
    supervisor would), to the first prediction of the new process a ``read_committed`` reader sees."""
    events = _events(records, int(rate * (before_kill + 120)), "rec")
    run.create_topics()
    run.start()
    producer, reader = run.producer(), run.reader("read_committed")
    killed_at = 0.0
    recovered_at = 0.0

    def watch() -> bool:
        nonlocal killed_at, recovered_at
        if not killed_at and time.time() - started >= before_kill:
            run.kill()
            killed_at = time.time()
            run.start()
        for message in take(reader, 0.001):
            # Kafka's CreateTime is when the producing process sent it: after the kill, a new one.
            if killed_at and message.timestamp()[1] > killed_at * 1000:
                recovered_at = recovered_at or time.time()
        return bool(recovered_at)

    try:
        _warm_up(run, producer, reader, records)
        started = time.time()
        with _no_pauses_here():
            _offer(run, producer, events, rate, watch)
    finally:
        run.stop()
        reader.close()
    if not recovered_at:
        raise RuntimeError(run.failure("no prediction after the restart"))
    return round(recovered_at - killed_at, 2)


def measure_memory(run: Run, records: list[dict], events: int, sample_every: float = 0.5) -> dict[str, Any]:
    """The service's resident memory while it works through ``events`` pre-produced events."""
    run.create_topics()
    publish(run.bootstrap, run.input_topic, [line for _, line in _events(records, events, "mem")])
    run.start()
    reader = run.reader("read_committed")
    samples: list[tuple[int, float]] = []
    seen = 0
    started = progress_at = time.monotonic()
    next_sample = started
    try:
        while seen < events:
            run.check_progress(progress_at, f"{seen} of {events} predictions committed")
            arrived = len(take(reader, 0.1))
            if arrived:
                seen, progress_at = seen + arrived, time.monotonic()
            if time.monotonic() >= next_sample:
                samples.append((seen, rss_mb(run.process.pid)))  # type: ignore[union-attr]
                next_sample += sample_every
        elapsed = time.monotonic() - started
        samples.append((seen, rss_mb(run.process.pid)))  # type: ignore[union-attr]
        peak = peak_rss_mb(run.process.pid)  # type: ignore[union-attr]
    finally:
        run.stop()
        reader.close()

    def rss_at(fraction: float) -> float:
        return next(rss for done, rss in samples if done >= fraction * events)

    return {
        "events": events,
        "seconds": round(elapsed, 1),
        "rss_mb_at_10_percent": round(rss_at(0.1), 1),
        "rss_mb_at_50_percent": round(rss_at(0.5), 1),
        "rss_mb_at_end": round(samples[-1][1], 1),
        "growth_mb_second_half": round(samples[-1][1] - rss_at(0.5), 1),
        "peak_rss_mb": round(peak, 1),
        "samples": [(done, round(rss, 1)) for done, rss in samples],
    }
