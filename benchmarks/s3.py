"""What keeping snapshots in S3 costs against local disk, and obstore against boto3, measured on
the local S3-compatible server (S3Proxy, started here) in one process.

    python -m benchmarks.s3 [--repeats 30]

Part 1, the client library (the reason the store uses obstore): median latency of a PUT and a
GET of a manifest-sized (2 KB) and a snapshot-sized (200 KB, 5 MB) object, and of listing 30
keys, through obstore and through boto3 (a dev dependency; left out when missing), the two
alternating; and the import and client set-up time, each in a fresh interpreter.

Part 2, the snapshot store: a checkpoint save (payload, manifest, ownership check, retention) and
a restore (listing and verified load: what a partition taken over costs before its re-learning)
on local disk and in a bucket; ratio = S3 over local.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Callable

from s3_local import LocalS3
from stream.checkpoint import restore_point
from stream.config import S3Settings
from stream.snapshots import SnapshotStore
from stream.storage import open_folder

SIZES = (2_000, 200_000, 5_000_000)


def _median_ms(run: Callable[[int], object], repeats: int) -> float:
    times = []
    for n in range(repeats):
        started = time.perf_counter()
        run(n)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


SETUP = {
    "obstore": "import obstore\nfrom obstore.store import S3Store\nS3Store('b', "
    "endpoint='http://127.0.0.1:1', access_key_id='k', secret_access_key='s', region='us-east-1', "
    "client_options={'allow_http': True})",
    "boto3": "import boto3\nboto3.client('s3', endpoint_url='http://127.0.0.1:1', aws_access_key_id='k', "
    "aws_secret_access_key='s', region_name='us-east-1')",
}


def _setup_ms(name: str, repeats: int = 5) -> float:
    """Import and client set-up in a fresh interpreter (what a service or CLI start pays), less
    the interpreter's own start."""

    def run(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - started

    return statistics.median(run(SETUP[name]) - run("pass") for _ in range(repeats)) * 1000


def _clients(server: LocalS3, bucket: str) -> dict[str, tuple[Callable, Callable, Callable]]:
    """name -> (put(key, data), get(key), list(prefix))."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        bucket, endpoint=server.endpoint_url, access_key_id=server.access_key,
        secret_access_key=server.secret_key, region=server.region, client_options={"allow_http": True},
    )  # fmt: skip
    clients = {
        "obstore": (
            lambda key, data: obstore.put(store, key, data),
            lambda key: bytes(obstore.get(store, key).bytes()),
            lambda prefix: [meta["path"] for batch in obstore.list(store, prefix=prefix) for meta in batch],
        )
    }
    try:
        from s3_local import client as boto3_client

        client = boto3_client(server.endpoint_url, server.access_key, server.secret_key, server.region)
    except Exception as error:  # boto3 is a dev dependency
        print(f"boto3 not measured: {error}", file=sys.stderr)
        return clients
    clients["boto3"] = (
        lambda key, data: client.put_object(Bucket=bucket, Key=key, Body=data),
        lambda key: client.get_object(Bucket=bucket, Key=key)["Body"].read(),
        lambda prefix: [
            o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        ],
    )
    return clients


def _libraries(server: LocalS3, repeats: int) -> None:
    """Each figure's runs alternate between the clients, so both see the same machine."""
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    server.create_bucket(bucket)
    clients = _clients(server, bucket)
    columns = (
        [f"put {size // 1000} KB" for size in SIZES]
        + [f"get {size // 1000} KB" for size in SIZES]
        + ["list 30"]
    )
    times: dict[str, dict[str, list[float]]] = {name: {c: [] for c in columns} for name in clients}
    payloads = {size: os.urandom(size) for size in SIZES}
    for n in range(repeats):
        for name, (put, get, listing) in clients.items():
            for size in SIZES:
                key = f"{name}/{size}/{n}"
                times[name][f"put {size // 1000} KB"].append(_timed(put, key, payloads[size]))
                times[name][f"get {size // 1000} KB"].append(_timed(get, key))
            times[name]["list 30"].append(_timed(listing, f"{name}/{SIZES[0]}/"))
    print(f"{'client':8} {'import+client ms':>16}", *(f"{c:>11}" for c in columns))
    for name in clients:
        medians = (statistics.median(times[name][c][1:]) * 1000 for c in columns)  # the first warms up
        print(f"{name:8} {_setup_ms(name):16.1f}", *(f"{m:11.2f}" for m in medians))


def _timed(run: Callable[..., object], *arguments: object) -> float:
    started = time.perf_counter()
    run(*arguments)
    return time.perf_counter() - started


def _store(server: LocalS3, repeats: int) -> None:
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    server.create_bucket(bucket)
    os.environ.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
    settings = S3Settings(endpoint_url=server.endpoint_url, region=server.region)
    places = {"local": tempfile.mkdtemp(prefix="bench-s3-"), "s3": f"s3://{bucket}/stream"}
    # A pickle of ~100 KB (a small tree's size), with the offsets a restore checks.
    state = types.SimpleNamespace(offsets={"events:0": 0}, weights=list(range(25_000)))
    print(f"\n{'store':6} {'save checkpoint ms':>19} {'restore ms':>11}")
    figures = {}
    for name, location in places.items():
        store = SnapshotStore(open_folder(location, settings).child("events-0"), 10, "key", 20, 1 << 30)
        store.take_ownership(0, "bench")
        save = _median_ms(lambda n, s=store: s.save(state, "checkpoint", offsets={"events:0": 0}), repeats)
        named = store.list(reason="checkpoint")[-1].id

        def restore(n: int, location: str = location, named: str = named) -> None:
            """As a new owner restores: the checkpoint the commit names, found and loaded."""
            reader = SnapshotStore(open_folder(location, settings).child("events-0"), hmac_key="key")
            assert restore_point(reader, {"events:0": 1}, named) is not None

        figures[name] = (save, _median_ms(restore, repeats))
        print(f"{name:6} {figures[name][0]:19.2f} {figures[name][1]:11.2f}")
    save_ratio, restore_ratio = (figures["s3"][i] / figures["local"][i] for i in (0, 1))
    print(f"{'ratio':6} {save_ratio:19.2f} {restore_ratio:11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    with LocalS3() as server:
        print(f"S3Proxy at {server.endpoint_url}, medians of {args.repeats}")
        _libraries(server, args.repeats)
        _store(server, args.repeats)


if __name__ == "__main__":
    main()
