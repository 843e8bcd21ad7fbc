"""Where events come from and predictions go: Kafka client backends behind one interface
(:mod:`connectors.base`), and file readers for replay.

>>> sorted(BACKENDS)
['confluent-kafka', 'kafka-python']
"""

from __future__ import annotations

from connectors.base import ClientSettings, Connector

BACKENDS = {
    "kafka-python": "connectors.kafka:KafkaPythonConnector",
    "confluent-kafka": "connectors.confluent:ConfluentConnector",
}


def create_connector(
    backend: str, bootstrap_servers: str, settings: ClientSettings | None = None
) -> Connector:
    """The connector of ``backend`` (a key of :data:`BACKENDS`); its client library is imported
    only when chosen, so either one may be left uninstalled."""
    import importlib

    module, _, name = BACKENDS[backend].partition(":")
    try:
        connector_class = getattr(importlib.import_module(module), name)
    except ImportError as error:
        raise ImportError(
            f"kafka.backend={backend!r} needs its client library: {error}. "
            "Install it with `pip install 'stream[confluent]'` (confluent-kafka) or use kafka-python."
        ) from error
    return connector_class(bootstrap_servers, settings)
