"""A server on the local JVM, bound to 127.0.0.1: start, wait until ready, stop, serve until Ctrl-C.

``JvmServer`` holds the life cycle; a subclass (``kafka_local.LocalBroker``, ``s3_local.LocalS3``)
says how to prepare its files and which command starts its JVM, which log line means ready and
what a client needs to reach it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Self

from local_servers import ServerError

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    >>> 1024 <= free_port() < 65536
    True
    """
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def accepts_connections(port: int, host: str = HOST) -> bool:
    """Whether a TCP connection to ``host:port`` is accepted (within a second).

    >>> accepts_connections(free_port())
    False
    """
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a text file (``(no log)`` if there is no file).

    >>> tail(Path("/nonexistent/server.log"))
    '(no log)'
    """
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def signal_group(pid: int, signum: int) -> None:
    """Signal the process group that ``pid`` leads (a server starts in a session of its own), so a
    ``java`` wrapper script and the JVM it started both get it; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


class JvmServer:
    """A server process on the local JVM, with the life cycle ``kafka_local`` and ``s3_local`` share.

    The port (a free one unless given) is chosen once and kept across ``stop()``/``start()``, and so
    is the data folder (a temporary one unless given, removed by ``close()``): a stopped server comes
    back at the same address with its data, which tests use to simulate an outage.

    A subclass sets the class attributes and provides ``server_log``, ``_prepare`` (fetch, write
    the configuration, return the command; ``_java`` starts one) and ``describe``.
    """

    name: ClassVar[str] = "the local server"  # in messages: "<name> did not start within ..."
    ready_line: ClassVar[str]  # in ``server_log`` once the server is ready
    error: ClassVar[type[ServerError]] = ServerError
    start_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 10.0  # from SIGTERM to SIGKILL
    temp_prefix: ClassVar[str] = "local-server-"  # of the temporary data folder

    def __init__(self, data_dir: Path | None, port: int | None, heap: str, cache_dir: Path | None) -> None:
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix=self.temp_prefix)).resolve()
        self.port = port or free_port()
        self.heap = heap
        self.cache_dir = cache_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def server_log(self) -> Path:
        """The log that shows ``ready_line`` once the server is ready."""
        raise NotImplementedError

    @property
    def console_log(self) -> Path:
        """Where the JVM's standard output and error go (by default the server log)."""
        return self.server_log

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def describe(self) -> dict[str, str]:
        """What a client needs to reach the server (a detached server's state file holds it)."""
        raise NotImplementedError

    def _prepare(self) -> list[str]:
        """Fetch what the server needs, write its configuration; return the command that starts it."""
        raise NotImplementedError

    def _java(self, *args: str) -> list[str]:
        """A ``java`` command line with this server's heap limit and ``args``."""
        java = shutil.which("java")
        if java is None:
            raise self.error(
                f"Java 17+ is needed to run {self.name}; "
                "install it (e.g. `apt-get install openjdk-17-jre-headless`)"
            )
        return [java, f"-Xmx{self.heap}", "-Djava.awt.headless=true", *args]

    def start(self, timeout: float | None = None) -> Self:
        """Launch the JVM and wait until it logs ``ready_line`` and accepts connections on ``port``.

        Within ``timeout`` seconds (``start_timeout`` by default). On a failure, a timeout or Ctrl-C
        while waiting, the JVM is stopped: none is left behind.
        """
        if self.running:
            return self
        command = self._prepare()
        log_offset = self.server_log.stat().st_size if self.server_log.exists() else 0
        with open(self.console_log, "ab") as console:
            self.process = subprocess.Popen(
                command,
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self._wait_until_ready(log_offset, self.start_timeout if timeout is None else timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, log_offset: int, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self.error(
                    f"{self.name} exited with code {self.process.returncode} while starting; {self._logs()}"
                )
            if self.server_log.exists():
                with open(self.server_log, "rb") as log:
                    log.seek(log_offset)
                    if self.ready_line.encode() in log.read() and accepts_connections(self.port):
                        return
            time.sleep(0.05)
        raise self.error(f"{self.name} did not start within {timeout:.0f}s; {self._logs()}")

    def _logs(self) -> str:
        return "\n".join(
            f"the end of {path}:\n{tail(path)}" for path in dict.fromkeys((self.server_log, self.console_log))
        )

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM to the process group (a clean shutdown), SIGKILL if it has not exited in time.

        In ``timeout`` seconds, ``stop_timeout`` by default.
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def close(self) -> None:
        """Stop, and remove the data folder if this server created it."""
        self.stop()
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def serve(self, announce: Callable[[], object]) -> None:
        """Start, ``announce()``, and serve until Ctrl-C, SIGTERM or the server's own exit; then close.

        For a ``run`` command: SIGTERM exits this process (status 0) through the same cleanup, also
        while the server is starting.
        """
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            self.start()
            announce()
            while self.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
