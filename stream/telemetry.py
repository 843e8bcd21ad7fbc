"""Prometheus metrics for the service, in its own registry.

Counters and gauges are read at scrape time from the service's ``latest_status`` (rebuilt every
second on the service thread), so the hot loop pays only for the latency histogram.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        status = self.status()
        partitions = status.get("partitions", {})
        totals = {
            "stream_predictions": ("predictions published (events out)", status.get("predictions", 0)),
            "stream_dead_letters": ("events sent to the dead-letter topic", status.get("dead_letters", 0)),
            "stream_recoveries": ("restarts of the clients after a failure", status.get("recoveries", 0)),
            "stream_commits": ("commits of predictions and offsets", status.get("commits", 0)),
            "stream_checkpoints": ("checkpoint snapshots taken", status.get("checkpoints", 0)),
        }
        for name, (help_text, value) in totals.items():
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], value)
            yield counter
        per_partition = {
            "stream_events": ("events consumed (events in)", "events"),
            "stream_errors": ("events that could not be used", "errors"),
            "stream_drifts": ("drifts detected", "drifts"),
            "stream_snapshots": ("snapshots taken", "snapshots"),
            "stream_rollbacks": ("rollbacks (policy or manual)", "rollbacks"),
        }
        for name, (help_text, field) in per_partition.items():
            counter = CounterMetricFamily(name, help_text, labels=["partition"])
            for scope, summary in partitions.items():
                counter.add_metric([scope], summary[field] + (summary["errors"] if field == "events" else 0))
            yield counter
        lag = GaugeMetricFamily("stream_lag", "records behind the end of the partition", labels=["partition"])
        metric = GaugeMetricFamily(
            "stream_rolling_metric", "the rolling model metric", labels=["partition", "metric"]
        )
        version = GaugeMetricFamily("stream_model_version", "model switches + 1", labels=["partition"])
        for scope, summary in partitions.items():
            lag.add_metric([scope], summary["lag"])
            name = summary["rolling_metric"]
            metric.add_metric([scope, name], summary["metrics"].get(name, 0.0))
            version.add_metric([scope], summary["model_version"])
        yield lag
        yield metric
        yield version
        ready = GaugeMetricFamily("stream_ready", "1 when connected, assigned and with a model")
        ready.add_metric([], 1.0 if status.get("ready") else 0.0)
        yield ready


class Telemetry:
    """The registry, and the one metric the loop updates itself."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "stream_prediction_latency_seconds",
            "from the event's produce time to its prediction being sent",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch(self, status: Callable[[], dict[str, Any]]) -> None:
        self.registry.register(_StatusCollector(status))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
