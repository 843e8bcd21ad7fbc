"""Publishing: predictions to the predictions topic, dead letters to the dead-letter topic.

A prediction is sent as soon as it is made, before the event is learned; with
``exactly_once`` it becomes visible when the transaction commits (:mod:`stream.checkpoint`).
A dead letter keeps the event's key, carries the reason as an ``error`` header as well, and
stays under ``service.max_event_bytes`` (:func:`stream.dead_letters.dead_letter`) and under its
topic's ``max.message.bytes``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from connectors.base import Message, Sink
from stream.config import Config
from stream.dead_letters import DeadLetterWatch, dead_letter
from stream.events import encode_record
from stream.status import Counters
from stream.telemetry import Histogram

logger = logging.getLogger(__name__)

ERROR_HEADER_CHARS = 500


# What a Kafka record adds to its value, besides its key and headers (batch and record headers),
# with room to spare: a value within the topic's max.message.bytes less this always fits.
RECORD_OVERHEAD_BYTES = 256


class Publisher:
    """Encodes and sends what the service writes, and counts it.

    Every record fits its topic: ``max_message_bytes`` holds each output topic's
    ``max.message.bytes`` as the broker reported it. A dead letter is cut to fit (as
    :func:`stream.dead_letters.dead_letter` cuts it to ``service.max_event_bytes``); a prediction
    too large for its topic becomes a dead letter saying so, rather than a send that fails for ever.
    """

    def __init__(
        self,
        config: Config,
        sink: Sink,
        counters: Counters,
        latency: Histogram,
        max_message_bytes: Mapping[str, int] | None = None,
        watch: DeadLetterWatch | None = None,
    ) -> None:
        self.sink = sink
        self.counters = counters
        self.latency = latency
        self.watch = watch or DeadLetterWatch()
        self.predictions_topic = config.kafka.predictions_topic
        self.dead_letter_topic = config.kafka.dead_letter_topic
        self.max_event_bytes = config.service.max_event_bytes
        limits = max_message_bytes or {}
        self._max_prediction_bytes = limits.get(self.predictions_topic, 2**31) - RECORD_OVERHEAD_BYTES
        self._max_dead_letter_bytes = limits.get(self.dead_letter_topic, 2**31) - RECORD_OVERHEAD_BYTES
        # The record being processed: where a prediction that cannot be sent is dead-lettered from,
        # and when it was produced (its latency).
        self.source: Message | None = None

    def prediction(self, record: dict[str, Any]) -> None:
        value = encode_record(record)
        source = self.source
        if len(value) > self._max_prediction_bytes and source is not None:
            self.dead_letter(
                source,
                f"its prediction of {len(value)} bytes does not fit the predictions topic "
                f"(max.message.bytes {self._max_prediction_bytes + RECORD_OVERHEAD_BYTES})",
            )
            return
        self.sink.send(self.predictions_topic, value)
        self.counters.predictions += 1
        self.watch.outcome(None)
        if source is not None and source.timestamp_ms >= 0:
            self.latency.observe(max(0.0, time.time() - source.timestamp_ms / 1000))

    def dead_letter(self, message: Message, reason: str) -> None:
        source = {"topic": message.topic, "partition": message.partition, "offset": message.offset}
        header = reason[:ERROR_HEADER_CHARS].encode("utf-8", "backslashreplace")
        room = self._max_dead_letter_bytes - len(message.key or b"") - len(header) - len("error")
        record = dead_letter(reason, message.value, source, min(self.max_event_bytes, room))
        self.sink.send(
            self.dead_letter_topic, encode_record(record), key=message.key, headers=[("error", header)]
        )
        self.counters.dead_letters += 1
        self.watch.outcome(reason)
        logger.warning("dead letter %s:%d@%d: %s", message.topic, message.partition, message.offset, reason)
