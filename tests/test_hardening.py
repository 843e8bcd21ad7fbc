"""No single event, label or output can break a model or wedge the service: on the real broker,
with both backends (the engine's part, through replay, is in tests/test_healing.py)."""

from __future__ import annotations

import json
import re
import tempfile

import httpx
import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from connectors import BACKENDS
from stream.config import Config
from stream.prequential import Engine
from stream.replay import run_replay
from stream.snapshots import SnapshotStore
from tests.kafka_helpers import (
    ServiceProcess,
    drifting_events,
    publish,
    read_topic,
    service_config,
    wait_for_records,
    wait_until,
)
from tests.model_equality import canonical_pickle
from tests.test_service import _final_state

pytestmark = pytest.mark.kafka

TOPIC_LIMIT = 300_000  # the output topics' max.message.bytes, well under the events allowed in


def _stream() -> tuple[list[bytes], dict[str, int]]:
    """Good events with, among them, one of each kind of trouble; and where each trouble is."""
    good = [json.dumps(e).encode() for e in drifting_events(900, seed=21)]
    poison = json.dumps({"x": {"salary": 1e308, "age": 30}, "y": True, "id": "poison"}).encode()
    oversized = json.dumps({"x": {"salary": 1.0}, "y": True, "pad": "p" * 1_500_000}).encode()
    long_id = json.dumps({"x": {"salary": 5e4, "age": 40}, "y": False, "id": "i" * 400_000}).encode()
    values = [*good[:300], poison, *good[300:600], oversized, long_id, *good[600:]]
    return values, {"poison": 300, "oversized": 601, "long_id": 602}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_no_single_event_breaks_the_model_or_wedges_the_service(kafka, tmp_path, backend):
    config = service_config(
        kafka.bootstrap_servers, tmp_path, kafka={"backend": backend}, service={"max_event_bytes": 2_000_000}
    )
    config["model"] = {"task": "binary"}  # the default StandardScaler | LogisticRegression
    topics = config["kafka"]
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    limited = {"max.message.bytes": str(TOPIC_LIMIT)}
    admin.create_topics([
        NewTopic(topics["predictions_topic"], 1, 1, topic_configs=limited),
        NewTopic(topics["dead_letter_topic"], 1, 1, topic_configs=limited),
    ])  # fmt: skip
    admin.close()
    values, at = _stream()
    publish(kafka.bootstrap_servers, topics["input_topic"], values)
    # Then most events go bad for one reason (an upstream change, say).
    broken_upstream = [b'{"features": {"salary": 1.0}}'] * 600
    publish(kafka.bootstrap_servers, topics["input_topic"], broken_upstream)

    service = ServiceProcess(tmp_path, config).start()
    try:
        api = httpx.Client(base_url=service.api_url(), timeout=10)
        wait_for_records(kafka.bootstrap_servers, topics["dead_letter_topic"], 603, log=service.log)
        wait_until(lambda: api.get("/health").json()["status"] == "degraded", 30, "never said it is degraded")
        assert "missing required field 'x'" in api.get("/health").json()["reason"]
        metrics = api.get("/metrics").text
        assert "stream_dead_letter_alarm 1.0" in metrics
        size = re.search(r'stream_snapshot_bytes\{partition="[^"]+"\} (\S+)', metrics)
        assert size and float(size.group(1)) > 1000, metrics  # the model's weight, as its snapshot
        assert "most events are dead letters" in service.log()
    finally:
        assert service.stop() == 0, service.log()
    predictions = read_topic(kafka.bootstrap_servers, topics["predictions_topic"], 901)
    letters = read_topic(kafka.bootstrap_servers, topics["dead_letter_topic"], 603)

    # Each trouble is one dead letter, within the topic's limit, with its reason; the poison was
    # predicted first (its learning broke the model only afterwards), then unlearned.
    reasons = {letter["source"]["offset"]: letter["error"] for letter in letters[:3]}
    assert "broke the model" in reasons[at["poison"]]
    assert "exceeds service.max_event_bytes" not in reasons[at["oversized"]]  # 1.5 MB is allowed in
    assert "unknown field(s): 'pad'" in reasons[at["oversized"]]
    assert reasons[at["long_id"]].startswith("its prediction of ")
    assert all(len(json.dumps(letter)) < TOPIC_LIMIT for letter in letters)
    assert len(predictions) == 901 and {p["id"] for p in predictions} >= {"poison"}

    # The model is the one a replay of the same events gives (the poison unlearned there too).
    engine = Engine(Config.model_validate(config), SnapshotStore(tempfile.mkdtemp()))
    run_replay(enumerate([*values, *broken_upstream]), engine)
    _, state = _final_state(config, topics["input_topic"])
    assert canonical_pickle(state.model) == canonical_pickle(engine.state.model)

    # And what was kept is healthy: a restart goes on predicting.
    publish(
        kafka.bootstrap_servers, topics["input_topic"], [json.dumps(e).encode() for e in drifting_events(50)]
    )
    service.start()
    try:
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 951, log=service.log)
    finally:
        assert service.stop() == 0, service.log()
