"""A real single-node Apache Kafka broker (KRaft) on the local JVM, for machines without Docker.

Development tooling, installed with the package so that ``stream demo`` works from an installed
copy too. The broker jars come from Maven Central through this package's ``pom.xml`` and are cached
once per Kafka version; after that no network is needed. The broker binds to 127.0.0.1 on free
ports, formats its own storage, and stops cleanly on SIGTERM.

Command line (also ``docker/kafka-local/kafka-local``)::

    python -m kafka_local fetch          # download the jars (idempotent)
    python -m kafka_local run            # start, print the address, wait for Ctrl-C
    python -m kafka_local start          # start in the background (state in .kafka-local/)
    python -m kafka_local stop           # stop the background broker

From Python::

    with LocalBroker() as broker:
        print(broker.bootstrap_servers)
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import uuid
from pathlib import Path

from local_servers import ServerError, cli, detached, maven
from local_servers.server import JvmServer, free_port

POM_PATH = Path(__file__).resolve().parent / "pom.xml"
DEFAULT_STATE_DIR = Path(".kafka-local")  # of the working directory (``make`` runs in the repository)
READY_LINE = "Kafka Server started"


class BrokerError(ServerError):
    """The local broker could not be fetched, formatted or started."""


def kafka_version(pom_path: Path = POM_PATH) -> str:
    """The Kafka version pinned in the POM (the single place it is written)."""
    return maven.pom_property(pom_path, "kafka.version", BrokerError)


def default_cache_dir() -> Path:
    """``$STREAM_KAFKA_CACHE``, else ``$XDG_CACHE_HOME/stream-kafka``, else ``~/.cache/stream-kafka``."""
    return maven.cache_dir("STREAM_KAFKA_CACHE", "stream-kafka")


def fetch_jars(cache_dir: Path | None = None, quiet: bool = False) -> Path:
    """Download the broker's runtime jars once; return the folder that holds them.

    The folder is filled in a temporary sibling and renamed into place, so an interrupted
    download never leaves a half-filled cache that later runs would trust.
    """
    version = kafka_version()
    return maven.fetch(
        (cache_dir or default_cache_dir()) / f"kafka-{version}" / "libs",
        POM_PATH,
        ["dependency:copy-dependencies", "-DincludeScope=runtime"],
        product="Apache Kafka",
        version=version,
        complete=lambda libs: any(libs.glob("kafka_2.13-*.jar")),
        instead="set KAFKA_BOOTSTRAP_SERVERS to an existing broker",
        error=BrokerError,
        quiet=quiet,
    )


def cluster_id() -> str:
    """A random KRaft cluster id: 22 base64url characters, never starting with "-".

    A leading "-" would be read as an option by the storage tool (Kafka's own ``Uuid.randomUuid``
    avoids it for the same reason).
    """
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = {level}
"""


class LocalBroker(JvmServer):
    """A single-node KRaft broker+controller bound to 127.0.0.1.

    Ports are chosen once (free ports unless given) and kept across ``stop()``/``start()``, so a
    stopped broker comes back at the same address with its data: tests use that to simulate an
    outage.
    """

    name = "the local Kafka broker"
    ready_line = READY_LINE
    error = BrokerError
    start_timeout = 90.0
    stop_timeout = 30.0  # a clean shutdown flushes the logs
    temp_prefix = "kafka-local-"

    def __init__(
        self,
        data_dir: Path | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        cache_dir: Path | None = None,
        log_level: str = "INFO",
    ) -> None:
        super().__init__(data_dir, port, heap, cache_dir)
        self.controller_port = controller_port or free_port()
        self.log_level = log_level

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def server_log(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def console_log(self) -> Path:
        return self.data_dir / "console.log"

    def describe(self) -> dict[str, str]:
        return {"bootstrap_servers": self.bootstrap_servers, "data_dir": str(self.data_dir)}

    def _write_config(self) -> Path:
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "message.max.bytes": str(8 * 1024 * 1024),
        }
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
        (self.data_dir / "log4j2.properties").write_text(
            _LOG4J2.format(log_file=self.server_log, level=self.log_level)
        )
        return config

    def _kafka(self, libs: Path, main_class: str, *args: str) -> list[str]:
        return self._java(
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            main_class,
            *args,
        )

    def _prepare(self) -> list[str]:
        """Fetch the jars, write the configuration and format the storage on first start."""
        libs = fetch_jars(self.cache_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            formatted = subprocess.run(
                self._kafka(libs, "kafka.tools.StorageTool", "format", "-t", cluster_id(), "-c", str(config)),
                capture_output=True,
                text=True,
            )
            if formatted.returncode != 0:
                raise BrokerError(f"formatting KRaft storage failed:\n{formatted.stdout}{formatted.stderr}")
        return self._kafka(libs, "kafka.Kafka", str(config))


def start_detached(state_dir: Path = DEFAULT_STATE_DIR, port: int | None = None) -> dict:
    """Start a broker that outlives this process; its pid and address go to ``state_dir``."""
    return detached.start(
        state_dir / "broker.json", lambda: LocalBroker(data_dir=state_dir / "data", port=port)
    )


def read_detached(state_dir: Path = DEFAULT_STATE_DIR) -> dict | None:
    """The running detached broker's state, or None (a stale state file is removed)."""
    return detached.read(state_dir / "broker.json")


def stop_detached(state_dir: Path = DEFAULT_STATE_DIR, timeout: float = 30.0) -> bool:
    """Stop the detached broker (SIGKILL after ``timeout`` seconds); whether one was running."""
    return detached.stop(state_dir / "broker.json", timeout)


def _fetched() -> str:
    libs = fetch_jars()
    jars = list(libs.glob("*.jar"))
    return f"{libs} ({len(jars)} jars, {sum(jar.stat().st_size for jar in jars) / 1e6:.0f} MB)"


def _run(args: argparse.Namespace) -> None:
    broker = LocalBroker(port=args.port)
    broker.serve(
        lambda: print(
            f"Kafka {kafka_version()} ready at {broker.bootstrap_servers} (Ctrl-C stops)", flush=True
        )
    )


def main(argv: list[str] | None = None) -> int:
    return cli.main(
        argv,
        prog="kafka-local",
        description="Fetch and run a single-node Apache Kafka broker (KRaft) on the local JVM.",
        noun="broker",
        state_dir=DEFAULT_STATE_DIR,
        fetch=_fetched,
        run=_run,
        start=lambda args: start_detached(args.state_dir, args.port),
        stop=stop_detached,
        status=read_detached,
        show=lambda state: str(state["bootstrap_servers"]),
    )
