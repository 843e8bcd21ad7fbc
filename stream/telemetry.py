"""Prometheus metrics for the service, in its own registry.

Counters and gauges are read at scrape time from the service's latest
:class:`~stream.status.ServiceStatus` (rebuilt every second on the service thread), so the hot
loop pays only for the latency histogram, a plain list of bucket counts (a third of the cost of
prometheus-client's locked ``Histogram.observe``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from stream.join import JoinSummary
from stream.status import PartitionStatus, ServiceStatus

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A label's delay, event time to label time: seconds to a week.
LABEL_DELAY_BUCKETS = (1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0)


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], ServiceStatus]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        status = self.status()
        totals = {
            "stream_predictions": ("predictions published (events out)", status.predictions),
            "stream_dead_letters": ("events sent to the dead-letter topic", status.dead_letters),
            "stream_recoveries": ("restarts of the clients after a failure", status.recoveries),
            "stream_commits": ("commits of predictions and offsets", status.commits),
            "stream_checkpoints": ("checkpoint snapshots taken", status.checkpoints),
        }
        for name, (help_text, value) in totals.items():
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], value)
            yield counter
        per_partition: dict[str, tuple[str, Callable[[PartitionStatus], int]]] = {
            "stream_events": ("events consumed (events in)", lambda p: p.events + p.errors),
            "stream_errors": ("events that could not be used", lambda p: p.errors),
            "stream_drifts": ("drifts detected", lambda p: p.drifts),
            "stream_snapshots": ("snapshots taken", lambda p: p.snapshots),
            "stream_rollbacks": ("rollbacks (policy or manual)", lambda p: p.rollbacks),
        }
        for name, (help_text, read) in per_partition.items():
            counter = CounterMetricFamily(name, help_text, labels=["partition"])
            for scope, partition in status.partitions.items():
                counter.add_metric([scope], read(partition))
            yield counter
        yield from _label_metrics(status)
        lag = GaugeMetricFamily("stream_lag", "records behind the end of the partition", labels=["partition"])
        metric = GaugeMetricFamily(
            "stream_rolling_metric", "the rolling model metric", labels=["partition", "metric"]
        )
        version = GaugeMetricFamily("stream_model_version", "model switches + 1", labels=["partition"])
        size = GaugeMetricFamily(
            "stream_snapshot_bytes", "size of the last snapshot: what the model weighs", labels=["partition"]
        )
        for scope, partition in status.partitions.items():
            lag.add_metric([scope], partition.lag)
            name = partition.rolling_metric
            metric.add_metric([scope, name], partition.metrics.get(name, 0.0))
            version.add_metric([scope], partition.model_version)
            size.add_metric([scope], partition.snapshot_bytes)
        yield lag
        yield metric
        yield version
        yield size
        ready = GaugeMetricFamily("stream_ready", "1 when connected, assigned and with a model")
        ready.add_metric([], 1.0 if status.ready else 0.0)
        yield ready
        alarm = GaugeMetricFamily(
            "stream_dead_letter_alarm", "1 while most recent events are dead letters for one reason"
        )
        alarm.add_metric([], 0.0 if status.dead_letter_alarm is None else 1.0)
        yield alarm


def _label_metrics(status: ServiceStatus) -> Iterator[Any]:
    """Delayed labels, for the partitions that have them."""
    joins = {scope: partition.labels for scope, partition in status.partitions.items() if partition.labels}
    if not joins:
        return
    counters: dict[str, tuple[str, Callable[[JoinSummary], int]]] = {
        "stream_labels_joined": ("delayed labels learned with their event", lambda j: j.joined),
        "stream_events_expired": (
            "events that waited for their label past labels.max_wait, or were evicted (labels.max_pending)",
            lambda j: j.expired + j.evicted,
        ),
        "stream_labels_orphaned": (
            "labels whose event expired or never came (dead letters)",
            lambda j: j.orphans,
        ),
        "stream_labels_duplicate": (
            "labels for an event already learned (not learned again)",
            lambda j: j.duplicates,
        ),
    }
    for name, (help_text, read) in counters.items():
        counter = CounterMetricFamily(name, help_text, labels=["partition"])
        for scope, join in joins.items():
            counter.add_metric([scope], read(join))
        yield counter
    waiting = GaugeMetricFamily(
        "stream_events_waiting", "events waiting for their label", labels=["partition"]
    )
    held = GaugeMetricFamily("stream_labels_held", "labels waiting for their event", labels=["partition"])
    for scope, join in joins.items():
        waiting.add_metric([scope], join.waiting)
        held.add_metric([scope], join.held)
    yield waiting
    yield held


class Histogram(Collector):
    """A histogram observed by the service thread alone and exported at scrape time.

    >>> histogram = Histogram("stream_prediction_latency_seconds", "latency", LATENCY_BUCKETS)
    >>> histogram.observe(0.004); histogram.observe(0.2)
    >>> buckets = {s.labels["le"]: s.value for s in next(histogram.collect()).samples if "le" in s.labels}
    >>> buckets["0.0025"], buckets["0.005"], buckets["0.25"], buckets["+Inf"]
    (0, 1, 2, 2)
    """

    def __init__(self, name: str, help_text: str, bounds: tuple[float, ...]) -> None:
        self.name, self.help_text = name, help_text
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts, total = list(self.counts), self.total  # a copy: the service thread goes on counting
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(self.name, self.help_text, buckets=buckets, sum_value=total)


class Telemetry:
    """The registry, and the histograms the loop updates itself."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "stream_prediction_latency_seconds",
            "from the event's produce time to its prediction being sent",
            LATENCY_BUCKETS,
        )
        self.label_delay = Histogram(
            "stream_label_delay_seconds",
            "delayed labels: from the event's time to its label's (their ts, else when they came)",
            LABEL_DELAY_BUCKETS,
        )
        self.registry.register(self.latency)
        self.registry.register(self.label_delay)

    def watch(self, status: Callable[[], ServiceStatus]) -> None:
        self.registry.register(_StatusCollector(status))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
