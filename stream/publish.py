"""Publishing: predictions to the predictions topic, dead letters to the dead-letter topic.

A prediction is sent as soon as it is made, before the event is learned; with
``exactly_once`` it becomes visible when the transaction commits (:mod:`stream.checkpoint`).
A dead letter keeps the event's key, carries the reason as an ``error`` header as well, and
stays under ``service.max_event_bytes`` (:func:`stream.dead_letters.dead_letter`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from connectors.base import Message, Sink
from stream.config import Config
from stream.dead_letters import dead_letter
from stream.events import encode_record
from stream.status import Counters
from stream.telemetry import LatencyHistogram

logger = logging.getLogger(__name__)

ERROR_HEADER_CHARS = 500


class Publisher:
    """Encodes and sends what the service writes, and counts it."""

    def __init__(self, config: Config, sink: Sink, counters: Counters, latency: LatencyHistogram) -> None:
        self.sink = sink
        self.counters = counters
        self.latency = latency
        self.predictions_topic = config.kafka.predictions_topic
        self.dead_letter_topic = config.kafka.dead_letter_topic
        self.max_event_bytes = config.service.max_event_bytes
        # When the event being processed was produced (ms, -1 unknown): the prediction's latency.
        self.produced_ms = -1

    def prediction(self, record: dict[str, Any]) -> None:
        self.sink.send(self.predictions_topic, encode_record(record))
        self.counters.predictions += 1
        if self.produced_ms >= 0:
            self.latency.observe(max(0.0, time.time() - self.produced_ms / 1000))

    def dead_letter(self, message: Message, reason: str) -> None:
        source = {"topic": message.topic, "partition": message.partition, "offset": message.offset}
        record = dead_letter(reason, message.value, source, self.max_event_bytes)
        self.sink.send(
            self.dead_letter_topic,
            encode_record(record),
            key=message.key,
            headers=[("error", reason[:ERROR_HEADER_CHARS].encode("utf-8", "backslashreplace"))],
        )
        self.counters.dead_letters += 1
        logger.warning("dead letter %s:%d@%d: %s", message.topic, message.partition, message.offset, reason)
