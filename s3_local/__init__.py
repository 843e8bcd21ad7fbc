"""A real S3-compatible server (S3Proxy on the local JVM), for machines without Docker.

Development tooling, the S3 counterpart of ``kafka_local``. S3Proxy (Apache-2.0,
https://github.com/gaul/s3proxy) implements the S3 REST API on Apache jclouds; here it stores
on the local filesystem (jclouds' ``filesystem-nio2`` backend): a bucket is a folder under the
server's ``basedir`` and an object is a file in it. Its single ``jar-with-dependencies`` jar
comes from Maven Central through this package's ``pom.xml`` and is cached once per version
(``$STREAM_S3_CACHE``, else ``$XDG_CACHE_HOME/stream-s3``, else ``~/.cache/stream-s3``); after
that no network is needed. The server binds to 127.0.0.1 on a free port, checks AWS signatures
(V2 and V4) against credentials generated per server, is ready in about a second and stops on
SIGTERM.

Command line::

    python -m s3_local fetch          # download the jar (idempotent)
    python -m s3_local run            # start, print endpoint and credentials, wait for Ctrl-C
    python -m s3_local start          # start in the background (state in .s3-local/)
    python -m s3_local stop           # stop the background server

``run`` and ``start`` print ``S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``
and ``AWS_REGION`` lines, the variables the test suite reads to use an existing server.

From Python::

    with LocalS3() as server:
        server.create_bucket("events")
        print(server.endpoint_url, server.access_key, server.secret_key, server.region)

``client(endpoint_url, access_key, secret_key, region)`` is a boto3 S3 client set up for it
(boto3 is a dev dependency).

Known limits of S3Proxy 2.6: boto3 needs ``request_checksum_calculation="when_required"`` (and
``response_checksum_validation="when_required"``) for PutObject, as ``client`` sets; conditional
writes (``If-None-Match: *``, ``If-Match``) are ignored, the object is overwritten; with the default
``filesystem-nio2`` backend a multipart object's ETag in listings and HEAD is the MD5 of its
content, not the ``<md5>-<parts>`` that CompleteMultipartUpload returned.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from botocore.client import BaseClient

POM_PATH = Path(__file__).resolve().parent / "pom.xml"
DEFAULT_STATE_DIR = Path(".s3-local")  # of the working directory (``make`` runs in the repository)
READY_LINE = "Started Server"
DEFAULT_REGION = "us-east-1"


class S3Error(RuntimeError):
    """The local S3 server could not be fetched or started, or an S3 request was refused."""


def s3proxy_version(pom_path: Path = POM_PATH) -> str:
    """The S3Proxy version pinned in the POM (the single place it is written)."""
    match = re.search(r"<s3proxy\.version>([^<]+)</s3proxy\.version>", pom_path.read_text())
    if not match:
        raise S3Error(f"no <s3proxy.version> property in {pom_path}")
    return match.group(1)


def default_cache_dir() -> Path:
    """``$STREAM_S3_CACHE``, else ``$XDG_CACHE_HOME/stream-s3``, else ``~/.cache/stream-s3``."""
    if os.environ.get("STREAM_S3_CACHE"):
        return Path(os.environ["STREAM_S3_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "stream-s3"


def fetch_jar(cache_dir: Path | None = None, quiet: bool = False) -> Path:
    """Download the S3Proxy jar once; return its path.

    The jar is fetched into a temporary sibling folder that is renamed into place only once the
    download is complete and checked, so an interrupted download is never trusted by a later run.
    """
    version = s3proxy_version()
    folder = (cache_dir or default_cache_dir()) / f"s3proxy-{version}"
    jar = folder / f"s3proxy-{version}-jar-with-dependencies.jar"
    if (folder / ".complete").exists() and jar.exists():
        return jar
    if shutil.which("mvn") is None:
        raise S3Error(
            "Maven (mvn) is needed once to fetch the S3Proxy jar from Maven Central; install it "
            "(e.g. `apt-get install maven`) or set S3_ENDPOINT_URL to an existing S3 server"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{folder.name}-", dir=folder.parent))
    if not quiet:
        print(f"fetching S3Proxy {version} from Maven Central into {folder} ...", file=sys.stderr)
    command = [
        "mvn",
        "-q",
        "-B",
        "-C",  # a checksum mismatch fails the download instead of warning
        "-f",
        str(POM_PATH),
        "dependency:copy",
        f"-DoutputDirectory={staging}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    fetched = staging / jar.name
    if result.returncode != 0 or not fetched.exists() or not zipfile.is_zipfile(fetched):
        shutil.rmtree(staging, ignore_errors=True)
        raise S3Error(f"mvn could not fetch the S3Proxy jar:\n{result.stdout}{result.stderr}")
    (staging / ".complete").write_text(version)
    staging.chmod(0o755)  # mkdtemp made it private; the cache may be shared
    if folder.exists():  # a concurrent fetch finished first, or an earlier one was incomplete
        if (folder / ".complete").exists() and jar.exists():
            shutil.rmtree(staging)
            return jar
        shutil.rmtree(folder)
    staging.rename(folder)
    return jar


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client(endpoint_url: str, access_key: str, secret_key: str, region: str = DEFAULT_REGION) -> BaseClient:
    """A boto3 S3 client for an S3-compatible server, with the settings S3Proxy needs.

    Path-style addressing (``endpoint/bucket/key``: no per-bucket host names on 127.0.0.1), and
    checksums only where the operation requires them: S3Proxy refuses the CRC headers that boto3
    sends by default since 1.36. boto3 is a dev dependency, imported only here.
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError as error:
        raise S3Error("boto3 is a dev dependency: pip install -e '.[dev]'") from error
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        ),
    )


def create_bucket(
    endpoint_url: str, name: str, *, access_key: str, secret_key: str, region: str = DEFAULT_REGION
) -> None:
    """CreateBucket on any S3-compatible server; a bucket this account already owns is fine."""
    s3 = client(endpoint_url, access_key, secret_key, region)  # first: a clear error without boto3
    from botocore.exceptions import BotoCoreError, ClientError

    options: dict[str, object] = {}
    if region != DEFAULT_REGION:
        options["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(Bucket=name, **options)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "BucketAlreadyOwnedByYou":
            return
        raise S3Error(f"CreateBucket {name!r} at {endpoint_url} failed: {error}") from error
    except BotoCoreError as error:  # the server does not answer, or its answer is not S3
        raise S3Error(f"CreateBucket {name!r} at {endpoint_url} failed: {error}") from error


def _property(value: str) -> str:
    """A value for a Java ``.properties`` file (read as ISO-8859-1, ``\\`` escapes)."""
    out = []
    for char in value:
        if char == "\\":
            out.append("\\\\")
        elif " " <= char <= "~":
            out.append(char)
        else:
            units = char.encode("utf-16-be")
            out.extend(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))
    return "".join(out)


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class LocalS3:
    """An S3Proxy server on 127.0.0.1 storing buckets as folders under ``basedir``.

    The port and credentials are chosen once (a free port and random keys unless given) and kept
    across ``stop()``/``start()``, so a stopped server comes back at the same address with its
    buckets: tests can use that to simulate an outage.

    ``provider`` is the jclouds storage backend. The default ``filesystem-nio2`` lists objects like
    S3 does; the older ``filesystem`` (deprecated by S3Proxy) also lists every folder on an
    object's path as an object of its own (``a/`` for ``a/b``, 4096 bytes), which S3 never does.
    """

    region = DEFAULT_REGION

    def __init__(
        self,
        data_dir: Path | None = None,
        port: int | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        heap: str = "256m",
        cache_dir: Path | None = None,
        provider: str = "filesystem-nio2",
    ) -> None:
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="s3-local-")).resolve()
        self.port = port or free_port()
        self.access_key = access_key or "S3LOCAL" + secrets.token_hex(7).upper()
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.heap = heap
        self.cache_dir = cache_dir
        self.provider = provider
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def basedir(self) -> Path:
        """The folder that holds the buckets (one subfolder each)."""
        return self.data_dir / "buckets"

    @property
    def server_log(self) -> Path:
        return self.data_dir / "s3proxy.log"

    def _write_config(self) -> Path:
        properties = {
            "s3proxy.endpoint": self.endpoint_url,
            "s3proxy.authorization": "aws-v2-or-v4",
            "s3proxy.identity": self.access_key,
            "s3proxy.credential": self.secret_key,
            "jclouds.provider": self.provider,
            # Required by S3Proxy for every backend, unused by the filesystem ones.
            "jclouds.identity": "local",
            "jclouds.credential": "local",
            "jclouds.filesystem.basedir": str(self.basedir),
        }
        config = self.data_dir / "s3proxy.conf"
        config.write_text("".join(f"{key}={_property(value)}\n" for key, value in properties.items()))
        config.chmod(0o600)  # it holds the secret key
        return config

    def _command(self, jar: Path, config: Path) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise S3Error(
                "Java 17+ is needed to run the local S3 server (e.g. "
                "`apt-get install openjdk-17-jre-headless`)"
            )
        return [
            java,
            f"-Xmx{self.heap}",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # starts faster; a test server needs no peak throughput
            "-Djava.awt.headless=true",
            # Logback's own configuration report is noise in the log.
            "-Dlogback.statusListenerClass=ch.qos.logback.core.status.NopStatusListener",
            "-jar",
            str(jar),
            "--properties",
            str(config),
        ]

    def start(self, timeout: float = 60.0) -> LocalS3:
        """Launch the JVM and wait until the server accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return self
        jar = fetch_jar(self.cache_dir)
        self.basedir.mkdir(parents=True, exist_ok=True)
        command = self._command(jar, self._write_config())
        log_offset = self.server_log.stat().st_size if self.server_log.exists() else 0
        with open(self.server_log, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self._wait_until_ready(log_offset, timeout)
        except BaseException:  # a timeout, or Ctrl-C while waiting: no JVM is left behind
            self.stop()
            raise
        return self

    def _wait_until_ready(self, log_offset: int, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise S3Error(
                    f"S3Proxy exited with code {self.process.returncode} while starting; "
                    f"the end of {self.server_log}:\n{_tail(self.server_log)}"
                )
            with open(self.server_log, "rb") as log:
                log.seek(log_offset)
                if READY_LINE.encode() in log.read() and self._accepts_connections():
                    return
            time.sleep(0.05)
        raise S3Error(
            f"S3Proxy did not start within {timeout:.0f}s; the end of {self.server_log}:\n"
            f"{_tail(self.server_log)}"
        )

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Jetty shuts down in well under a second), then SIGKILL if it does not exit."""
        if self.process is None:
            return
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def close(self) -> None:
        """Stop, and remove the data folder if this server created it."""
        self.stop()
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def create_bucket(self, name: str) -> None:
        """CreateBucket through the S3 API (a signed request, so the bucket is private like on S3).

        A folder made by hand under ``basedir`` is a bucket too, but S3Proxy's filesystem backend
        reads a world-readable folder as a public-read bucket that answers unsigned requests.
        """
        create_bucket(
            self.endpoint_url,
            name,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
        )

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _signal_group(pid: int, signum: int) -> None:
    """Signal the server's process group (it leads one): a ``java`` wrapper script goes too."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def _state_file(state_dir: Path) -> Path:
    return state_dir / "server.json"


def start_detached(state_dir: Path = DEFAULT_STATE_DIR, port: int | None = None) -> dict:
    """Start a server that outlives this process; its pid, address and keys go to ``state_dir``."""
    state = read_detached(state_dir)
    if state is not None:
        return state
    server = LocalS3(data_dir=state_dir / "data", port=port)
    server.start()
    assert server.process is not None
    state = {"pid": server.process.pid, **_describe(server)}
    path = _state_file(state_dir)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        json.dump(state, file)
    return state


def read_detached(state_dir: Path = DEFAULT_STATE_DIR) -> dict | None:
    """The running detached server's state, or None (a stale state file is removed)."""
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


def stop_detached(state_dir: Path = DEFAULT_STATE_DIR, timeout: float = 10.0) -> bool:
    state = read_detached(state_dir)
    if state is None:
        return False
    _signal_group(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(state["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        _signal_group(state["pid"], signal.SIGKILL)
    _state_file(state_dir).unlink(missing_ok=True)
    return True


def _describe(server: LocalS3) -> dict[str, str]:
    return {
        "endpoint_url": server.endpoint_url,
        "access_key": server.access_key,
        "secret_key": server.secret_key,
        "region": server.region,
        "data_dir": str(server.data_dir),
    }


def _environment(state: Mapping[str, str]) -> str:
    """The server as the variables the test suite (and AWS clients) read."""
    return (
        f"S3_ENDPOINT_URL={state['endpoint_url']}\n"
        f"AWS_ACCESS_KEY_ID={state['access_key']}\n"
        f"AWS_SECRET_ACCESS_KEY={state['secret_key']}\n"
        f"AWS_REGION={state['region']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="s3-local",
        description="Fetch and run a local S3-compatible server (S3Proxy, filesystem storage) on the JVM.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download the S3Proxy jar from Maven Central (once)")
    run = commands.add_parser("run", help="start a server in the foreground until Ctrl-C")
    start = commands.add_parser("start", help="start a server in the background")
    for sub in (run, start):
        sub.add_argument("--port", type=int, help="listening port (default: a free port)")
        sub.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    for sub in (
        start,
        commands.add_parser("stop", help="stop the background server"),
        commands.add_parser("status", help="print the background server's endpoint and keys"),
    ):
        sub.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            jar = fetch_jar()
            print(f"{jar} ({jar.stat().st_size / 1e6:.0f} MB)")
        elif args.command == "run":
            server = LocalS3(port=args.port)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            try:
                server.start()
                for bucket in args.bucket:
                    server.create_bucket(bucket)
                print(_environment(_describe(server)), flush=True)
                print(
                    f"S3Proxy {s3proxy_version()} ready; buckets are folders under {server.basedir} "
                    "(Ctrl-C stops and deletes them)",
                    file=sys.stderr,
                    flush=True,
                )
                while server.process and server.process.poll() is None:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
            finally:
                server.close()
        elif args.command == "start":
            state = start_detached(args.state_dir, args.port)
            for bucket in args.bucket:
                create_bucket(
                    state["endpoint_url"],
                    bucket,
                    access_key=state["access_key"],
                    secret_key=state["secret_key"],
                    region=state["region"],
                )
            print(_environment(state))
        elif args.command == "stop":
            print("stopped" if stop_detached(args.state_dir) else "no server was running")
        elif args.command == "status":
            state = read_detached(args.state_dir)
            print(_environment(state) if state else "not running")
            return 0 if state else 1
    except S3Error as error:
        print(f"s3-local: {error}", file=sys.stderr)
        return 1
    return 0
