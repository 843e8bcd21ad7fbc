"""The HTTP API of a running service on the real broker."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from connectors.kafka import KafkaPythonConnector
from stream.api import ApiServer
from stream.config import Config, load_config
from stream.errors import ConfigError
from stream.events import validate_event
from stream.prequential import Engine
from stream.service import Service
from stream.snapshots import SnapshotStore
from tests.kafka_helpers import (
    ServiceProcess,
    drifting_events,
    publish,
    service_config,
    wait_for_records,
    wait_until,
)

pytestmark = pytest.mark.kafka
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def _service_with_api(kafka, workdir: Path) -> Iterator[tuple[httpx.Client, dict, ServiceProcess]]:
    """A service that has predicted 6,000 drifting events, and a client of its API."""
    config = service_config(kafka.bootstrap_servers, workdir, api={"port": 0, "token": TOKEN})
    topics = config["kafka"]
    events = drifting_events(6_000)
    publish(kafka.bootstrap_servers, topics["input_topic"], [json.dumps(e).encode() for e in events])
    service = ServiceProcess(workdir, config).start()
    try:
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 6_000, timeout=120)
        with httpx.Client(base_url=service.api_url(), timeout=30) as client:
            # The status the API serves is refreshed every second.
            wait_until(
                lambda: client.get("/api/stats").json()["predictions"] == 6_000, 60, "stats never caught up"
            )
            # Idle from here: the checkpoint of the last events (a second after them) rotates the
            # oldest checkpoint out, so a test that listed it first would find it gone.
            wait_until(
                lambda: any(
                    m["reason"] == "checkpoint" and m["events_seen"] == 6_000
                    for m in client.get("/api/snapshots").json()
                ),
                60,
                "the last events were never checkpointed",
            )
            yield client, config, service
    finally:
        assert service.stop() == 0, service.log()


@pytest.fixture(scope="module")
def running(kafka, tmp_path_factory):
    """Shared by the tests that only read: none of them changes the service's state."""
    with _service_with_api(kafka, tmp_path_factory.mktemp("api")) as running:
        yield running


@pytest.fixture
def own_service(kafka, tmp_path):
    """A service of its own, for a test that changes state (snapshots, pins, rollbacks)."""
    with _service_with_api(kafka, tmp_path) as running:
        yield running


def test_health_and_readiness(running):
    client, config, _ = running
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["partitions"] == [f"{config['kafka']['input_topic']}-0"]


def test_prometheus_metrics(running):
    client, config, _ = running
    text = client.get("/metrics").text
    scope = f"{config['kafka']['input_topic']}-0"
    assert "stream_predictions_total 6000.0" in text
    assert f'stream_events_total{{partition="{scope}"}} 6000.0' in text
    assert f'stream_lag{{partition="{scope}"}} 0.0' in text
    assert 'stream_prediction_latency_seconds_bucket{le="+Inf"} 6000.0' in text
    assert f'stream_rolling_metric{{metric="Accuracy (rolling 1000)",partition="{scope}"}}' in text
    for name in ("stream_errors_total", "stream_dead_letters_total", "stream_drifts_total",
                 "stream_snapshots_total", "stream_rollbacks_total", "stream_ready 1.0"):  # fmt: skip
        assert name in text


def test_stats_hold_counters_history_and_throughput(running):
    client, config, _ = running
    stats = client.get("/api/stats").json()
    assert stats["predictions"] == 6_000 and stats["ready"]
    (summary,) = stats["partitions"].values()
    assert summary["events"] == 6_000 and len(summary["history"]) == 6_000 // 500
    assert stats["throughput"] and {"time", "events_per_second", "lag"} <= stats["throughput"][-1].keys()
    drift = client.get("/api/drift").json()
    assert drift[f"{config['kafka']['input_topic']}-0"]["drifts"] == summary["drifts"] >= 1


def test_snapshots_can_be_listed_filtered_and_inspected(running):
    client, _, _ = running
    everything = client.get("/api/snapshots").json()
    drifts = client.get("/api/snapshots", params={"reason": "drift"}).json()
    assert drifts and {m["reason"] for m in drifts} == {"drift"} and len(drifts) < len(everything)
    assert client.get("/api/snapshots", params={"since": "2999-01-01T00:00:00Z"}).json() == []
    manifest = client.get(f"/api/snapshots/{drifts[0]['id']}").json()
    assert manifest["sha256"] == drifts[0]["sha256"]
    assert client.get("/api/snapshots/nope").status_code == 404
    assert client.get("/api/snapshots/..%2F..%2Fetc").status_code == 404


def test_predicting_with_a_snapshot_matches_its_model_and_leaves_the_live_model_alone(running):
    client, config, _ = running
    drift = client.get("/api/snapshots", params={"reason": "drift"}).json()[0]
    before = client.get("/api/stats").json()
    events = drifting_events(20, seed=99)
    response = client.post(f"/api/snapshots/{drift['id']}/predict", json=events)
    assert response.status_code == 200, response.text
    parsed = Config.model_validate(config)
    store = SnapshotStore.from_config(parsed.snapshots, f"{config['kafka']['input_topic']}-0")
    engine = Engine(parsed, store, store.load(drift["id"]))  # signed with the service's own key
    expected = [engine.predict(validate_event(e, "binary")) for e in events]
    got = response.json()["predictions"]
    assert [p["y_pred"] for p in got] == [p["y_pred"] for p in expected]
    single = client.post(f"/api/snapshots/{drift['id']}/predict", json=events[0]).json()
    assert single["predictions"][0]["y_pred"] == expected[0]["y_pred"]
    after = client.get("/api/stats").json()
    assert (
        next(iter(after["partitions"].values()))["events"]
        == next(iter(before["partitions"].values()))["events"]
    )


def test_bad_bodies_get_clear_json_errors(running):
    client, _, _ = running
    snapshot = client.get("/api/snapshots").json()[0]["id"]
    bad = client.post(f"/api/snapshots/{snapshot}/predict", json={"x": {"a": [1, 2]}})
    assert bad.status_code == 422 and "detail" in bad.json()
    label = client.post(f"/api/snapshots/{snapshot}/predict", json={"x": {"a": 1}, "y": "maybe"})
    assert label.status_code == 422 and "label for a binary task" in label.json()["detail"]
    huge = client.post(f"/api/snapshots/{snapshot}/predict", content=b"[" + b"1," * 600_000 + b"1]",
                       headers={"Content-Type": "application/json"})  # fmt: skip
    assert huge.status_code == 413
    chunked = client.post(f"/api/snapshots/{snapshot}/predict", content=iter([b'{"x": {"a": 1}}']),
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert chunked.status_code == 411
    too_many = client.post(f"/api/snapshots/{snapshot}/predict", json=[{"x": {"a": 1}}] * 1001)
    assert too_many.status_code == 413
    assert client.post("/api/snapshots/nope/predict", json={"x": {"a": 1}}).status_code == 404
    # Only UTF-8, as on the topic: Python's json would read these, the service dead-letters them.
    good = client.post(f"/api/snapshots/{snapshot}/predict", content=b'{"x": {"a": 1}}',
                       headers={"Content-Type": "application/json"})  # fmt: skip
    assert good.status_code == 200
    for encoding in ("utf-16", "utf-16-le", "utf-32", "utf-32-be", "utf-8-sig"):
        body = '{"x": {"a": 1}}'.encode(encoding)
        refused = client.post(f"/api/snapshots/{snapshot}/predict", content=body,
                              headers={"Content-Type": "application/json"})  # fmt: skip
        assert refused.status_code == 422 and "not UTF-8" in refused.json()["detail"], encoding


def test_state_changes_need_the_token(own_service):
    client, _, _ = own_service
    assert client.post("/api/snapshots").status_code == 401
    assert client.post("/api/snapshots", headers={"Authorization": "Bearer wrong"}).status_code == 401
    taken = client.post("/api/snapshots", headers=AUTH)
    assert taken.status_code == 200 and taken.json()["reason"] == "manual"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert client.post(f"/api/snapshots/{taken.json()['id']}/pin", headers=headers).status_code == 401
        assert (
            client.post(f"/api/snapshots/{taken.json()['id']}/rollback", headers=headers).status_code == 401
        )
    assert client.get("/api/snapshots", params={"pinned": True}).json() == []
    pinned = client.post(f"/api/snapshots/{taken.json()['id']}/pin", headers=AUTH)
    assert pinned.json()["pinned"] is True
    assert [m["id"] for m in client.get("/api/snapshots", params={"pinned": True}).json()] == [
        taken.json()["id"]
    ]


def test_a_rollback_changes_the_live_model(own_service):
    client, _, _ = own_service
    version = next(iter(client.get("/api/stats").json()["partitions"].values()))["model_version"]
    target = client.get("/api/snapshots", params={"reason": "drift"}).json()[0]["id"]
    response = client.post(f"/api/snapshots/{target}/rollback", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == version + 1
    wait_until(
        lambda: (
            next(iter(client.get("/api/stats").json()["partitions"].values()))["model_version"] == version + 1
        ),
        60,
        "the status never showed the new model version",
    )
    assert client.post("/api/snapshots/nope/rollback", headers=AUTH).status_code == 404
    assert client.post("/api/snapshots/00000999-drift/pin", headers=AUTH).status_code == 404


def test_the_openapi_schema_lists_every_endpoint(running):
    client, _, _ = running
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/health", "/ready", "/metrics", "/api/stats", "/api/drift", "/api/snapshots",
                 "/api/snapshots/{snapshot_id}", "/api/snapshots/{snapshot_id}/predict",
                 "/api/snapshots/{snapshot_id}/pin", "/api/snapshots/{snapshot_id}/rollback"):  # fmt: skip
        assert path in paths


@contextlib.contextmanager
def _offline_api(tmp_path: Path, **sections: dict) -> Iterator[tuple[Service, httpx.Client]]:
    """The API of a service object that never connects (no broker involved), and a client of it."""
    sections = {"snapshots": {"directory": str(tmp_path)}, "api": {"port": 0}, **sections}
    service = Service(Config.model_validate(sections), KafkaPythonConnector("127.0.0.1:1"), "unit")
    server = ApiServer(service)
    port = server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            yield service, client
    finally:
        server.stop()


def test_health_fails_once_the_service_loop_has_stalled(tmp_path):
    with _offline_api(tmp_path, service={"stall_seconds": 5}) as (service, client):
        assert client.get("/health").json() == {"status": "ok"}
        service.alive_at = time.monotonic() - 6  # as if a client call had blocked for 6 s
        stalled = client.get("/health")
        assert stalled.status_code == 503 and stalled.json()["status"] == "stalled"
        assert stalled.json()["seconds"] >= 6


def test_without_a_configured_token_state_changes_are_disabled(tmp_path):
    with _offline_api(tmp_path) as (_, client):
        assert client.post("/api/snapshots", headers=AUTH).status_code == 403
        assert client.post("/api/snapshots/x/rollback", headers=AUTH).status_code == 403
        assert client.post("/api/snapshots/x/pin", headers=AUTH).status_code == 403
        assert client.get("/ready").status_code == 503


def test_the_readme_curl_examples_work_as_written(own_service):
    client, _, _ = own_service
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## HTTP API, metrics and dashboard", 1)[1]
    script = section.split("```bash\n", 1)[1].split("```", 1)[0]
    first, rest = script.split("\n", 1)
    assert first.startswith("API=http://127.0.0.1:8000 TOKEN=secret")
    script = f"set -euo pipefail\nAPI={client.base_url} TOKEN={TOKEN}\n{rest}"
    assert script.count("curl ") >= 11
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    assert '"rolled_back_to"' in result.stdout and "stream_predictions_total" in result.stdout


# -- hardening: no request breaks or drags the service -------------------------------------------


def _snapshot_in(directory: Path, label_of=lambda n: n % 2 == 0, sequence: int | None = None) -> str:
    """A signed snapshot of a linear model in ``<directory>/events-0``, as the service writes one."""
    config = Config.model_validate({"snapshots": {"directory": str(directory)}})
    engine = Engine(config, SnapshotStore.from_config(config.snapshots, "events-0"))
    for n in range(50):
        engine.process(validate_event({"x": {"a": float(n)}, "y": label_of(n)}, "binary"))
    return engine.store.save(engine.state, reason="manual", sequence=sequence).id


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"x": {"a": NaN}}', "feature 'a' is not a finite number"),
        (b'{"x": {"a": Infinity}}', "feature 'a' is not a finite number"),
        (b'[{"x": {"a": 1}}, {"x": {"a": -Infinity}}]', "feature 'a' is not a finite number"),
        (b'{"x": {"a": 1e400}}', "feature 'a' is not a finite number"),
        (b'{"x": {"a": 1}, "ts": NaN}', "'ts' must be a string or a finite number"),
        (b'{"x": {"a": "red"}}', "event 1: the model cannot predict it: TypeError"),
    ],
)
def test_an_event_that_cannot_be_predicted_gets_422_with_the_reason(tmp_path, body, reason):
    snapshot = _snapshot_in(tmp_path)
    with _offline_api(tmp_path) as (_, client):
        response = client.post(
            f"/api/snapshots/{snapshot}/predict", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert reason in json.dumps(response.json()["detail"])
        assert client.post(f"/api/snapshots/{snapshot}/predict", json={"x": {"a": 1}}).status_code == 200


def test_only_requests_that_name_the_api_as_host_are_answered(tmp_path):
    with _offline_api(tmp_path) as (_, client):
        port = client.base_url.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", "localhost"):
            assert client.get("/api/stats", headers={"Host": host}).status_code == 200, host
        # A page whose DNS name was rebound to this address sends its own name.
        for host in (f"attacker.example:{port}", "attacker.example", f"localhost:{port + 1}", ""):
            for path in ("/api/stats", "/api/snapshots", "/", "/metrics", "/static/dashboard.js"):
                refused = client.get(path, headers={"Host": host})
                assert refused.status_code == 421, (host, path)
            assert "api.allowed_hosts" in refused.json()["detail"]
            assert client.get("/health", headers={"Host": host}).status_code == 200  # probes: no data
    behind_a_proxy = {"port": 0, "allowed_hosts": ["stream.example.com", "proxy:8443"]}
    with _offline_api(tmp_path, api=behind_a_proxy) as (_, client):
        port = client.base_url.port
        for host in ("stream.example.com", f"stream.example.com:{port}", "proxy:8443"):
            assert client.get("/api/stats", headers={"Host": host}).status_code == 200, host
        for host in (f"127.0.0.1:{port}", "proxy", f"stream.example.com:{port + 1}"):
            assert client.get("/api/stats", headers={"Host": host}).status_code == 421, host


@pytest.mark.parametrize("token", ["", "   ", " secret", "secret\n", "sécret"])
def test_a_token_that_could_never_be_sent_is_refused_naming_the_key(token, monkeypatch):
    with pytest.raises(ConfigError, match=r"\n  api\.token: Value error, must"):
        load_config(overrides={"api.token": token})
    monkeypatch.setenv("STREAM__API__TOKEN", token)
    with pytest.raises(ConfigError, match=r"api\.token"):
        load_config()


def test_predictions_beyond_the_limit_are_turned_away_at_once_with_retry_after(tmp_path, monkeypatch):
    snapshot = _snapshot_in(tmp_path)
    inside, release = threading.Event(), threading.Event()
    predict = Engine.predict

    def held(self, event):
        inside.set()
        assert release.wait(30), "never released"
        return predict(self, event)

    monkeypatch.setattr(Engine, "predict", held)
    with _offline_api(tmp_path) as (_, client), ThreadPoolExecutor(1) as pool:
        url = f"{client.base_url}/api/snapshots/{snapshot}/predict"
        first = pool.submit(httpx.post, url, json={"x": {"a": 1}}, timeout=30)
        assert inside.wait(30), "the first prediction never started"
        busy = client.post(url, json={"x": {"a": 1}}, timeout=10)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        assert "api.max_concurrent_predicts" in busy.json()["detail"]
        assert client.get("/api/snapshots").status_code == 200  # reading is not held up
        release.set()
        assert first.result().status_code == 200
        assert client.post(url, json={"x": {"a": 1}}).status_code == 200


def test_a_snapshot_is_unpickled_once_for_many_predictions_and_again_once_rewritten(tmp_path, monkeypatch):
    snapshot = _snapshot_in(tmp_path)
    loaded: list[str] = []
    load = SnapshotStore.load

    def counted(self, snapshot_id):
        loaded.append(snapshot_id)
        return load(self, snapshot_id)

    monkeypatch.setattr(SnapshotStore, "load", counted)
    with _offline_api(tmp_path) as (_, client):
        url = f"/api/snapshots/{snapshot}/predict"
        before = [client.post(url, json={"x": {"a": 40.0}}).json()["predictions"] for _ in range(3)]
        assert loaded == [snapshot] and before[0] == before[2]
        # The same id written again with another model (a recovery writing its sequence again).
        assert _snapshot_in(tmp_path, label_of=lambda n: n % 2 == 1, sequence=1) == snapshot
        after = client.post(url, json={"x": {"a": 40.0}}).json()["predictions"]
        assert loaded == [snapshot, snapshot] and after[0]["y_pred"] != before[0][0]["y_pred"]


def test_the_api_knows_only_partition_folders(tmp_path):
    snapshot = _snapshot_in(tmp_path)
    (tmp_path / "<img src=x onerror=alert(1)>-0").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "linked-1").symlink_to(tmp_path / "events-0")
    with _offline_api(tmp_path) as (_, client):
        assert [m["id"] for m in client.get("/api/snapshots").json()] == [snapshot]  # the only one
        for partition in ("<img src=x onerror=alert(1)>-0", "junk", "linked-1", "..", "../events-0"):
            listed = client.get("/api/snapshots", params={"partition": partition})
            assert listed.status_code == 404, partition
            predicted = client.post(
                f"/api/snapshots/{snapshot}/predict", params={"partition": partition}, json={"x": {"a": 1}}
            )
            assert predicted.status_code == 404, partition
