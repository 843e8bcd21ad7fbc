"""The service's status: what the API, the Prometheus metrics, the log line and the dashboard read.

:class:`StatusBoard` builds one :class:`ServiceStatus` per refresh on the service thread and
replaces the previous one whole, so other threads read a consistent value without locks. The
rate and the lag are worked out there, once.

>>> board = StatusBoard("worker-1", "exactly_once")
>>> counters = Counters(predictions=100)
>>> _ = board.refresh(10.0, 1_700_000_000.0, counters, {}, lag=5, connected=True)
>>> counters.predictions = 350
>>> status = board.refresh(11.0, 1_700_000_001.0, counters, {}, lag=2, connected=True)
>>> status.events_per_second, status.lag, status.ready, len(status.throughput)
(250.0, 2, False, 2)
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

from pydantic import BaseModel, Field

from stream.join import JoinSummary
from stream.prequential import LearnerSummary

THROUGHPUT_SAMPLES = 600


@dataclass
class Counters:
    """Service-wide counts, kept across reconnects; changed by the service thread only."""

    predictions: int = 0
    dead_letters: int = 0
    relearned: int = 0
    commits: int = 0
    checkpoints: int = 0
    recoveries: int = 0


class PartitionStatus(LearnerSummary):
    """One owned partition: its engine's summary, where it stands, and what the charts show."""

    offset: int
    lag: int
    snapshot_bytes: int = Field(default=0, description="the size of the last snapshot: what the model weighs")
    rolling_metric: str = Field(description="the name of the metric in `metrics` the charts follow")
    labels: JoinSummary | None = Field(default=None, description="delayed labels: the join's counts")


class ThroughputSample(BaseModel):
    time: float = Field(description="Unix time of the sample")
    predictions: int
    events_per_second: float
    lag: int


class ServiceStatus(BaseModel):
    """The response of ``/api/stats``."""

    ready: bool = False
    connected: bool = False
    instance_id: str = ""
    guarantee: str = ""
    predictions: int = 0
    dead_letters: int = 0
    relearned: int = 0
    commits: int = 0
    checkpoints: int = 0
    recoveries: int = 0
    events_per_second: float = 0.0
    lag: int = 0
    failures_in_a_row: int = Field(default=0, description="recoveries since the service last made progress")
    last_failure: str | None = Field(default=None, description="what failed, while failures_in_a_row > 0")
    dead_letter_alarm: str | None = Field(
        default=None, description="set while most recent events are dead letters for one reason"
    )
    partitions: dict[str, PartitionStatus] = Field(default_factory=dict)
    throughput: list[ThroughputSample] = Field(default_factory=list)


class StatusBoard:
    """Keeps the throughput history and the latest :class:`ServiceStatus`."""

    def __init__(self, instance_id: str, guarantee: str) -> None:
        self.instance_id = instance_id
        self.guarantee = guarantee
        self._samples: deque[tuple[float, ThroughputSample]] = deque(maxlen=THROUGHPUT_SAMPLES)
        self._failure: tuple[int, str | None] = (0, None)
        self.latest = ServiceStatus(instance_id=instance_id, guarantee=guarantee)

    def refresh(
        self,
        monotonic: float,
        wall_time: float,
        counters: Counters,
        partitions: dict[str, PartitionStatus],
        lag: int,
        connected: bool,
        dead_letter_alarm: str | None = None,
    ) -> ServiceStatus:
        """Build the status as of now (``monotonic`` times the rate, ``wall_time`` stamps it)."""
        rate = 0.0
        if self._samples:
            then, previous = self._samples[-1]
            if monotonic > then:
                rate = (counters.predictions - previous.predictions) / (monotonic - then)
        sample = ThroughputSample(
            time=wall_time, predictions=counters.predictions, events_per_second=rate, lag=lag
        )
        self._samples.append((monotonic, sample))
        self.latest = ServiceStatus(
            ready=connected and bool(partitions),
            connected=connected,
            instance_id=self.instance_id,
            guarantee=self.guarantee,
            **asdict(counters),
            events_per_second=rate,
            lag=lag,
            failures_in_a_row=self._failure[0],
            last_failure=self._failure[1],
            dead_letter_alarm=dead_letter_alarm,
            partitions=partitions,
            throughput=[sample for _, sample in self._samples],
        )
        return self.latest

    def failed(self, reason: str | None, in_a_row: int) -> None:
        """The service failed ``in_a_row`` times since it last made progress (0: it makes progress)."""
        self._failure = (in_a_row, reason)
        self.latest = self.latest.model_copy(update={"failures_in_a_row": in_a_row, "last_failure": reason})

    def disconnected(self) -> None:
        """The clients are gone (a recovery or the end): not ready until the next refresh says so."""
        self.latest = self.latest.model_copy(update={"ready": False, "connected": False})
