"""Where events come from and predictions go: Kafka client backends behind one interface
(:mod:`connectors.base`), and file readers for replay.

>>> sorted(BACKENDS)
['confluent-kafka', 'kafka-python']
>>> resolve_backend("kafka-python")
'kafka-python'
>>> resolve_backend("auto")  # confluent-kafka is a dependency of the package
'confluent-kafka'
"""

from __future__ import annotations

import importlib.util

from connectors.base import ClientSettings, Connector

BACKENDS = {
    "kafka-python": "connectors.kafka:KafkaPythonConnector",
    "confluent-kafka": "connectors.confluent:ConfluentConnector",
}


def resolve_backend(backend: str) -> str:
    """The backend ``auto`` stands for: confluent-kafka (librdkafka, several times faster) when it
    is installed, which ``pip install stream`` does, else kafka-python. Any other name is itself."""
    if backend != "auto":
        return backend
    return "confluent-kafka" if importlib.util.find_spec("confluent_kafka") else "kafka-python"


def create_connector(
    backend: str, bootstrap_servers: str, settings: ClientSettings | None = None
) -> Connector:
    """The connector of ``backend`` (a key of :data:`BACKENDS`, or ``auto``); its client library is
    imported only when chosen, so either one may be left uninstalled."""
    backend = resolve_backend(backend)
    module, _, name = BACKENDS[backend].partition(":")
    try:
        connector_class = getattr(importlib.import_module(module), name)
    except ImportError as error:
        raise ImportError(
            f"kafka.backend={backend!r} needs its client library: {error}. "
            "Install it with `pip install confluent-kafka` or `pip install kafka-python`."
        ) from error
    return connector_class(bootstrap_servers, settings)
