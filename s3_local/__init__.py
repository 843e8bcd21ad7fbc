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
import secrets
import sys
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from local_servers import ServerError, cli, detached, maven
from local_servers.server import JvmServer
from local_servers.server import free_port as free_port

if TYPE_CHECKING:
    from botocore.client import BaseClient

POM_PATH = Path(__file__).resolve().parent / "pom.xml"
DEFAULT_STATE_DIR = Path(".s3-local")  # of the working directory (``make`` runs in the repository)
READY_LINE = "Started Server"
DEFAULT_REGION = "us-east-1"


class S3Error(ServerError):
    """The local S3 server could not be fetched or started, or an S3 request was refused."""


def s3proxy_version(pom_path: Path = POM_PATH) -> str:
    """The S3Proxy version pinned in the POM (the single place it is written)."""
    return maven.pom_property(pom_path, "s3proxy.version", S3Error)


def default_cache_dir() -> Path:
    """``$STREAM_S3_CACHE``, else ``$XDG_CACHE_HOME/stream-s3``, else ``~/.cache/stream-s3``."""
    return maven.cache_dir("STREAM_S3_CACHE", "stream-s3")


def fetch_jar(cache_dir: Path | None = None, quiet: bool = False) -> Path:
    """Download the S3Proxy jar once; return its path.

    The jar is fetched into a temporary sibling folder that is renamed into place only once the
    download is complete and checked, so an interrupted download is never trusted by a later run.
    """
    version = s3proxy_version()
    name = f"s3proxy-{version}-jar-with-dependencies.jar"
    folder = maven.fetch(
        (cache_dir or default_cache_dir()) / f"s3proxy-{version}",
        POM_PATH,
        ["dependency:copy"],
        product="S3Proxy",
        version=version,
        complete=lambda folder: zipfile.is_zipfile(folder / name),
        instead="set S3_ENDPOINT_URL to an existing S3 server",
        error=S3Error,
        quiet=quiet,
    )
    return folder / name


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


class LocalS3(JvmServer):
    """An S3Proxy server on 127.0.0.1 storing buckets as folders under ``basedir``.

    The port and credentials are chosen once (a free port and random keys unless given) and kept
    across ``stop()``/``start()``, so a stopped server comes back at the same address with its
    buckets: tests can use that to simulate an outage.

    ``provider`` is the jclouds storage backend. The default ``filesystem-nio2`` lists objects like
    S3 does; the older ``filesystem`` (deprecated by S3Proxy) also lists every folder on an
    object's path as an object of its own (``a/`` for ``a/b``, 4096 bytes), which S3 never does.
    """

    name = "the local S3 server (S3Proxy)"
    ready_line = READY_LINE
    error = S3Error
    start_timeout = 60.0
    stop_timeout = 10.0  # Jetty shuts down in well under a second
    temp_prefix = "s3-local-"
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
        super().__init__(data_dir, port, heap, cache_dir)
        self.access_key = access_key or "S3LOCAL" + secrets.token_hex(7).upper()
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.provider = provider

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

    def describe(self) -> dict[str, str]:
        return {
            "endpoint_url": self.endpoint_url,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "region": self.region,
            "data_dir": str(self.data_dir),
        }

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

    def _prepare(self) -> list[str]:
        """Fetch the jar and write the configuration."""
        jar = fetch_jar(self.cache_dir)
        self.basedir.mkdir(parents=True, exist_ok=True)
        return self._java(
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # starts faster; a test server needs no peak throughput
            # Logback's own configuration report is noise in the log.
            "-Dlogback.statusListenerClass=ch.qos.logback.core.status.NopStatusListener",
            "-jar",
            str(jar),
            "--properties",
            str(self._write_config()),
        )

    def create_bucket(self, name: str) -> None:
        """CreateBucket through the S3 API (a signed request, so the bucket is private like on S3).

        A folder made by hand under ``basedir`` is a bucket too, but S3Proxy's filesystem backend
        reads a world-readable folder as a public-read bucket that answers unsigned requests.
        """
        _create_buckets(self.describe(), [name])


def _create_buckets(state: Mapping[str, str], names: Iterable[str]) -> None:
    """CreateBucket for each name on the server a state (``LocalS3.describe``, a state file) names."""
    for name in names:
        create_bucket(
            state["endpoint_url"],
            name,
            access_key=state["access_key"],
            secret_key=state["secret_key"],
            region=state["region"],
        )


def start_detached(state_dir: Path = DEFAULT_STATE_DIR, port: int | None = None) -> dict:
    """Start a server that outlives this process; its pid, address and keys go to ``state_dir``."""
    return detached.start(state_dir / "server.json", lambda: LocalS3(data_dir=state_dir / "data", port=port))


def read_detached(state_dir: Path = DEFAULT_STATE_DIR) -> dict | None:
    """The running detached server's state, or None (a stale state file is removed)."""
    return detached.read(state_dir / "server.json")


def stop_detached(state_dir: Path = DEFAULT_STATE_DIR, timeout: float = 10.0) -> bool:
    """Stop the detached server (SIGKILL after ``timeout`` seconds); whether one was running."""
    return detached.stop(state_dir / "server.json", timeout)


def _environment(state: Mapping[str, str]) -> str:
    """The server as the variables the test suite (and AWS clients) read."""
    return (
        f"S3_ENDPOINT_URL={state['endpoint_url']}\n"
        f"AWS_ACCESS_KEY_ID={state['access_key']}\n"
        f"AWS_SECRET_ACCESS_KEY={state['secret_key']}\n"
        f"AWS_REGION={state['region']}"
    )


def _run(args: argparse.Namespace) -> None:
    server = LocalS3(port=args.port)

    def announce() -> None:
        _create_buckets(server.describe(), args.bucket)
        print(_environment(server.describe()), flush=True)
        print(
            f"S3Proxy {s3proxy_version()} ready; buckets are folders under {server.basedir} "
            "(Ctrl-C stops and deletes them)",
            file=sys.stderr,
            flush=True,
        )

    server.serve(announce)


def _start(args: argparse.Namespace) -> dict:
    state = start_detached(args.state_dir, args.port)
    _create_buckets(state, args.bucket)
    return state


def main(argv: list[str] | None = None) -> int:
    return cli.main(
        argv,
        prog="s3-local",
        description="Fetch and run a local S3-compatible server (S3Proxy, filesystem storage) on the JVM.",
        noun="server",
        state_dir=DEFAULT_STATE_DIR,
        fetch=lambda: f"{(jar := fetch_jar())} ({jar.stat().st_size / 1e6:.0f} MB)",
        run=_run,
        start=_start,
        stop=stop_detached,
        status=read_detached,
        show=_environment,
        options=lambda parser: parser.add_argument(
            "--bucket", action="append", default=[], help="create this bucket (repeatable)"
        ),
    )
