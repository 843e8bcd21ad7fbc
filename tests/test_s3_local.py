"""The S3 server the tests use (``s3``/``s3_bucket`` fixtures) and the local S3Proxy behind it.

Signed requests go through boto3 (``s3_local.client``), unsigned ones through plain httpx; tests
of the project's own S3 client code live elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError

import s3_local
from s3_local import LocalS3, S3Error

REPOSITORY = Path(__file__).resolve().parents[1]


def _xml(response: httpx.Response) -> dict[str, str]:
    """The S3 XML answer's elements by local name (first occurrence), namespaces dropped."""
    found: dict[str, str] = {}
    for element in ElementTree.fromstring(response.content).iter():
        found.setdefault(element.tag.rsplit("}", 1)[-1], element.text or "")
    return found


def _client(s3, secret_key: str | None = None):
    """A boto3 client for the fixture's server, with its credentials (or another secret)."""
    return s3_local.client(s3.endpoint_url, s3.access_key, secret_key or s3.secret_key, s3.region)


def _code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return error.value.response["Error"]["Code"]


def test_the_server_listens_and_answers_in_s3_xml(s3) -> None:
    url = httpx.URL(s3.endpoint_url)
    with socket.create_connection((url.host, url.port or 80), timeout=5):
        pass
    anonymous = httpx.get(f"{s3.endpoint_url}/", timeout=10)
    assert anonymous.status_code == 403
    assert _xml(anonymous)["Code"] == "AccessDenied"


def test_the_fixture_credentials_are_accepted_and_a_wrong_secret_is_refused(s3, s3_bucket: str) -> None:
    names = [bucket["Name"] for bucket in _client(s3).list_buckets()["Buckets"]]
    assert s3_bucket in names
    with pytest.raises(ClientError) as forged:
        _client(s3, secret_key="not-the-secret").list_buckets()
    assert _code(forged) == "SignatureDoesNotMatch"


def test_a_new_bucket_is_empty_private_and_writable(s3, s3_bucket: str) -> None:
    client = _client(s3)
    assert re.fullmatch(r"test-[0-9a-f]{8}", s3_bucket)
    client.head_bucket(Bucket=s3_bucket)  # raises ClientError (404) if it is not there
    assert client.list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 0
    anonymous = httpx.get(f"{s3.endpoint_url}/{s3_bucket}", timeout=10)
    assert anonymous.status_code == 403  # not public-read
    assert _xml(anonymous)["Code"] == "AccessDenied"
    client.put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"hello")
    assert client.get_object(Bucket=s3_bucket, Key="a/b.txt")["Body"].read() == b"hello"
    if s3.local is not None:  # S3Proxy: the bucket is a folder, the object a file in it
        assert (s3.local.basedir / s3_bucket).is_dir()
        assert (s3.local.basedir / s3_bucket / "a" / "b.txt").read_bytes() == b"hello"


def test_a_refused_create_bucket_is_an_s3_error_that_names_the_cause(s3) -> None:
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        s3_local.create_bucket(
            s3.endpoint_url, "never-made", access_key=s3.access_key, secret_key="not-the-secret"
        )


def test_without_boto3_the_client_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` now raises ImportError
    with pytest.raises(S3Error, match=r"boto3 is a dev dependency: pip install -e '\.\[dev\]'"):
        s3_local.client("http://127.0.0.1:1", "key", "secret", "us-east-1")


def test_a_stopped_server_is_gone_and_comes_back_at_the_same_address_with_its_buckets(
    tmp_path: Path,
) -> None:
    server = LocalS3(data_dir=tmp_path / "s3")
    try:
        server.start()
        endpoint = server.endpoint_url
        client = s3_local.client(endpoint, server.access_key, server.secret_key, server.region)
        server.create_bucket("kept")
        server.create_bucket("kept")  # again: a bucket this account already owns is fine
        client.put_object(Bucket="kept", Key="k", Body=b"v")
        assert server.process is not None
        pid = server.process.pid
        server.stop()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        with pytest.raises(httpx.ConnectError):
            httpx.get(endpoint, timeout=2)
        server.start()
        assert server.endpoint_url == endpoint
        assert client.get_object(Bucket="kept", Key="k")["Body"].read() == b"v"
    finally:
        server.close()
    assert server.process is None


def test_a_server_that_cannot_start_fails_with_the_end_of_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = LocalS3(data_dir=tmp_path / "s3", port=taken.getsockname()[1])
        try:
            with pytest.raises(S3Error, match=r"(?s)exited with code .*Failed to bind"):
                server.start()
        finally:
            server.close()


def test_the_cache_location_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAM_S3_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert s3_local.default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("STREAM_S3_CACHE")
    assert s3_local.default_cache_dir() == tmp_path / "xdg" / "stream-s3"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert s3_local.default_cache_dir() == Path.home() / ".cache" / "stream-s3"


def test_an_interrupted_download_is_not_trusted(tmp_path: Path) -> None:
    version = s3_local.s3proxy_version()
    half = tmp_path / f"s3proxy-{version}"
    half.mkdir()
    (half / f"s3proxy-{version}-jar-with-dependencies.jar").write_bytes(b"PK\x03\x04 cut short")
    jar = s3_local.fetch_jar(tmp_path, quiet=True)
    assert jar.parent == half and (half / ".complete").read_text() == version
    assert jar.stat().st_size > 10_000_000
    assert [path.name for path in tmp_path.iterdir()] == [half.name]  # no staging folder left


def test_the_command_line_starts_and_stops_a_background_server(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "s3_local", *args, "--state-dir", str(state_dir)],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=120,
        )

    started = cli("start", "--bucket", "from-the-cli")
    assert started.returncode == 0, started.stderr
    env = dict(line.split("=", 1) for line in started.stdout.splitlines())
    pid = json.loads((state_dir / "server.json").read_text())["pid"]
    assert (state_dir / "server.json").stat().st_mode & 0o777 == 0o600  # it holds the secret key
    try:
        assert set(env) == {"S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}
        client = s3_local.client(
            env["S3_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["AWS_REGION"]
        )
        client.head_bucket(Bucket="from-the-cli")  # raises ClientError (404) if it was not created
        assert cli("status").stdout == started.stdout
        stopped = cli("stop")
        assert stopped.stdout.strip() == "stopped", stopped.stderr
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert cli("status").returncode == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
