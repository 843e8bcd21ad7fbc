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
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

POM_PATH = Path(__file__).resolve().parent / "pom.xml"
DEFAULT_STATE_DIR = Path(".kafka-local")  # of the working directory (``make`` runs in the repository)
READY_LINE = "Kafka Server started"


class BrokerError(RuntimeError):
    """The local broker could not be fetched, formatted or started."""


def kafka_version(pom_path: Path = POM_PATH) -> str:
    """The Kafka version pinned in the POM (the single place it is written)."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom_path.read_text())
    if not match:
        raise BrokerError(f"no <kafka.version> property in {pom_path}")
    return match.group(1)


def default_cache_dir() -> Path:
    """``$STREAM_KAFKA_CACHE``, else ``$XDG_CACHE_HOME/stream-kafka``, else ``~/.cache/stream-kafka``."""
    if "STREAM_KAFKA_CACHE" in os.environ:
        return Path(os.environ["STREAM_KAFKA_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "stream-kafka"


def fetch_jars(cache_dir: Path | None = None, quiet: bool = False) -> Path:
    """Download the broker's runtime jars once; return the folder that holds them.

    The folder is filled in a temporary sibling and renamed into place, so an interrupted
    download never leaves a half-filled cache that later runs would trust.
    """
    libs = (cache_dir or default_cache_dir()) / f"kafka-{kafka_version()}" / "libs"
    if (libs / ".complete").exists():
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError(
            "Maven (mvn) is needed once to fetch the Kafka broker jars from Maven Central; "
            "install it (e.g. `apt-get install maven`) or set KAFKA_BOOTSTRAP_SERVERS "
            "to an existing broker"
        )
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    if not quiet:
        print(
            f"fetching Apache Kafka {kafka_version()} jars from Maven Central into {libs} ...",
            file=sys.stderr,
        )
    command = [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(POM_PATH),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(f"mvn could not fetch the Kafka jars:\n{result.stdout}{result.stderr}")
    (staging / ".complete").write_text(kafka_version())
    if libs.exists():  # a concurrent fetch finished first
        shutil.rmtree(staging)
    else:
        staging.rename(libs)
    return libs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


class LocalBroker:
    """A single-node KRaft broker+controller bound to 127.0.0.1.

    Ports are chosen once (free ports unless given) and kept across ``stop()``/``start()``, so a
    stopped broker comes back at the same address with its data: tests use that to simulate an
    outage.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        cache_dir: Path | None = None,
        log_level: str = "INFO",
    ) -> None:
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="kafka-local-"))
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.heap = heap
        self.cache_dir = cache_dir
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def server_log(self) -> Path:
        return self.data_dir / "server.log"

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

    def _java(self, libs: Path, main_class: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError(
                "Java 17+ is needed to run the local Kafka broker (e.g. "
                "`apt-get install openjdk-17-jre-headless`)"
            )
        return [
            java,
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            main_class,
            *args,
        ]

    def start(self, timeout: float = 90.0) -> LocalBroker:
        """Format storage on first start, launch the JVM and wait until the broker is ready."""
        if self.process is not None and self.process.poll() is None:
            return self
        libs = fetch_jars(self.cache_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            formatted = subprocess.run(
                self._java(libs, "kafka.tools.StorageTool", "format", "-t", cluster_id(), "-c", str(config)),
                capture_output=True,
                text=True,
            )
            if formatted.returncode != 0:
                raise BrokerError(f"formatting KRaft storage failed:\n{formatted.stdout}{formatted.stderr}")
        log_offset = self.server_log.stat().st_size if self.server_log.exists() else 0
        with open(self.data_dir / "console.log", "ab") as console:
            self.process = subprocess.Popen(
                self._java(libs, "kafka.Kafka", str(config)),
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(
                    f"the broker exited with code {self.process.returncode}; "
                    f"see {self.server_log} and {self.data_dir / 'console.log'}"
                )
            if self.server_log.exists():
                with open(self.server_log, "rb") as log:
                    log.seek(log_offset)
                    if READY_LINE.encode() in log.read():
                        return self
            time.sleep(0.1)
        self.stop()
        raise BrokerError(f"the broker did not start within {timeout:.0f}s; see {self.server_log}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (clean shutdown), then SIGKILL if it does not exit in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        """Stop, and remove the data folder if this broker created it."""
        self.stop()
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _state_file(state_dir: Path) -> Path:
    return state_dir / "broker.json"


def start_detached(state_dir: Path = DEFAULT_STATE_DIR, port: int | None = None) -> dict:
    """Start a broker that outlives this process; its pid and address go to ``state_dir``."""
    state = read_detached(state_dir)
    if state is not None:
        return state
    broker = LocalBroker(data_dir=state_dir / "data", port=port)
    broker.start()
    assert broker.process is not None
    state = {
        "pid": broker.process.pid,
        "bootstrap_servers": broker.bootstrap_servers,
        "data_dir": str(broker.data_dir),
    }
    _state_file(state_dir).write_text(json.dumps(state))
    return state


def read_detached(state_dir: Path = DEFAULT_STATE_DIR) -> dict | None:
    """The running detached broker's state, or None (a stale state file is removed)."""
    path = _state_file(state_dir)
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    try:
        os.kill(state["pid"], 0)
    except ProcessLookupError:
        path.unlink()
        return None
    return state


def stop_detached(state_dir: Path = DEFAULT_STATE_DIR, timeout: float = 30.0) -> bool:
    state = read_detached(state_dir)
    if state is None:
        return False
    os.kill(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(state["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(state["pid"], signal.SIGKILL)
    _state_file(state_dir).unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kafka-local",
        description="Fetch and run a single-node Apache Kafka broker (KRaft) on the local JVM.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download the broker jars from Maven Central (once)")
    run = commands.add_parser("run", help="start a broker in the foreground until Ctrl-C")
    start = commands.add_parser("start", help="start a broker in the background")
    for sub in (run, start):
        sub.add_argument("--port", type=int, help="listener port (default: a free port)")
    for sub in (
        start,
        commands.add_parser("stop", help="stop the background broker"),
        commands.add_parser("status", help="print the background broker's address"),
    ):
        sub.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            libs = fetch_jars()
            size = sum(path.stat().st_size for path in libs.glob("*.jar"))
            print(f"{libs} ({len(list(libs.glob('*.jar')))} jars, {size / 1e6:.0f} MB)")
        elif args.command == "run":
            with LocalBroker(port=args.port) as broker:
                print(f"Kafka {kafka_version()} ready at {broker.bootstrap_servers} (Ctrl-C stops)")
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                try:
                    while broker.process and broker.process.poll() is None:
                        time.sleep(0.5)
                except KeyboardInterrupt:
                    pass
        elif args.command == "start":
            print(start_detached(args.state_dir, args.port)["bootstrap_servers"])
        elif args.command == "stop":
            print("stopped" if stop_detached(args.state_dir) else "no broker was running")
        elif args.command == "status":
            state = read_detached(args.state_dir)
            print(state["bootstrap_servers"] if state else "not running")
            return 0 if state else 1
    except BrokerError as error:
        print(f"kafka-local: {error}", file=sys.stderr)
        return 1
    return 0
