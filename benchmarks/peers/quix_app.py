"""Peer: the same River model inside a Quix Streams application, as a user would write it.

    python -m benchmarks.peers.quix_app BOOTSTRAP INPUT OUTPUT MODEL COUNT exactly-once|at-least-once SECONDS

SECONDS is Quix's ``commit_interval`` (its default is 5 s; the benchmark sets the service's).

The model lives in the process (River models are not Quix state); Quix handles consuming,
producing and committing with its own processing guarantee. No snapshots, no drift handling.
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

from quixstreams import Application

from benchmarks.models import MODELS


def main(
    bootstrap: str,
    input_topic: str,
    output_topic: str,
    model_name: str,
    count: int,
    guarantee: str,
    commit_interval: float,
) -> None:
    model = MODELS[model_name]()
    processed = 0

    def on_processed(topic: str, partition: int, offset: int) -> None:
        nonlocal processed
        processed += 1
        if processed >= count:
            app.stop()

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-{input_topic}",
        auto_offset_reset="earliest",
        processing_guarantee=guarantee,  # type: ignore[arg-type]
        commit_interval=commit_interval,
        state_dir=tempfile.mkdtemp(prefix="quix-state-"),
        on_message_processed=on_processed,
        loglevel="WARNING",
    )

    def predict_then_learn(event: dict[str, Any]) -> dict[str, Any]:
        proba = model.predict_proba_one(event["x"])
        y_pred = max(proba, key=proba.get) if proba else None
        model.learn_one(event["x"], event["y"])
        return {"id": event["id"], "y_pred": y_pred}

    dataframe = app.dataframe(app.topic(input_topic, value_deserializer="json"))
    dataframe.apply(predict_then_learn).to_topic(app.topic(output_topic, value_serializer="json"))
    app.run()


if __name__ == "__main__":
    bootstrap, input_topic, output_topic, model, count, guarantee, commit_interval = sys.argv[1:8]
    main(bootstrap, input_topic, output_topic, model, int(count), guarantee, float(commit_interval))
