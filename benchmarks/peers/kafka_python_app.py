"""Peer: the consume / predict / produce / learn loop a user would write with kafka-python.

At-least-once (offsets committed every 1,000 events after a flush), no snapshots, no dead letters,
no drift handling: the baseline the service is compared with.

    python -m benchmarks.peers.kafka_python_app BOOTSTRAP INPUT OUTPUT MODEL COUNT
"""

from __future__ import annotations

import json
import sys

from kafka import KafkaConsumer, KafkaProducer

from benchmarks.models import MODELS


def main(bootstrap: str, input_topic: str, output_topic: str, model_name: str, count: int) -> None:
    model = MODELS[model_name]()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=f"peer-{input_topic}",
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    # Metadata first: a first join that precedes it is followed by a second one, which kafka-python
    # 3.0.12 can drop for good (the service works around it: connectors/kafka.py).
    consumer.partitions_for_topic(input_topic)
    consumer.subscribe([input_topic])
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    seen = 0
    while seen < count:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                event = json.loads(record.value)
                proba = model.predict_proba_one(event["x"])
                y_pred = max(proba, key=proba.get) if proba else None
                producer.send(output_topic, json.dumps({"id": event["id"], "y_pred": y_pred}).encode())
                model.learn_one(event["x"], event["y"])
                seen += 1
                if seen % 1000 == 0:
                    producer.flush()
                    consumer.commit()
    producer.flush()
    consumer.commit()
    producer.close()
    consumer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
