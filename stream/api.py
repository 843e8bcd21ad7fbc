"""The HTTP API and dashboard of a running service (FastAPI, served by uvicorn in a thread).

Reading endpoints use the service's latest :class:`~stream.status.ServiceStatus` and the snapshot
files; endpoints that change state (take, pin, roll back a snapshot) run on the service thread through
``Service.submit`` and need the bearer token from ``api.token`` (no token configured: 403).
No endpoint accepts a pickle or a path; snapshot ids and partitions are checked by the store.

The API must not become a way in or a drag on the stream:

- only requests whose Host header names the API (``api.allowed_hosts``) are answered, so a web
  page that rebinds its DNS name to this address cannot read it (421 otherwise; the liveness and
  readiness probes, which carry no data, answer any Host);
- an invalid body is answered 422 with the reasons, never with the input echoed (NaN and
  ``1e400`` parse as floats that JSON cannot encode), and so is an event the model refuses;
- at most ``api.max_concurrent_predicts`` snapshot predictions run at once, counted before a
  body is read (the others get 503 and ``Retry-After`` at once, their bodies unread), on models
  loaded once and kept (the last few, by scope, id and payload hash).
"""

from __future__ import annotations

import asyncio
import hmac
import re
import threading
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from stream.config import ApiConfig, Config
from stream.errors import ConfigError, InvalidEvent, NotOwnedError, SnapshotError, SnapshotNotFound
from stream.events import EventModel
from stream.prequential import Engine
from stream.service import Service
from stream.snapshots import SnapshotManifest, SnapshotStore, list_scopes
from stream.status import ServiceStatus

STATIC = Path(__file__).parent / "static"


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


LOADED_SNAPSHOTS_KEPT = 4
# Probes (a supervisor's, say Kubernetes', which sends the pod's address as Host) and no data.
ANY_HOST_PATHS = frozenset({"/health", "/ready"})
# The route whose requests api.max_concurrent_predicts limits, before its body is read.
PREDICT_PATH = re.compile(r"/api/snapshots/[^/]+/predict")


class PredictResponse(BaseModel):
    snapshot: str
    predictions: list[dict[str, Any]]


class RollbackResponse(BaseModel):
    rolled_back_to: str
    snapshot: SnapshotManifest
    model_version: int


def _name_and_port(host: str) -> tuple[str, str | None]:
    """A Host header's name and port: ``("localhost", "8000")``, ``("[::1]", None)``."""
    name, colon, port = host.rpartition(":")
    return (name, port) if colon and port.isdigit() else (host, None)


class HostCheck:
    """The Host headers the API answers: ``api.allowed_hosts``, by default the bound address,
    ``localhost`` and ``127.0.0.1``. A name without a port matches with no port or the API's own.

    >>> check = HostCheck(ApiConfig())
    >>> check.allows("127.0.0.1:8000", 8000), check.allows("localhost:8000", 8000)
    (True, True)
    >>> check.allows("attacker.example:8000", 8000), check.allows("localhost:9000", 8000)
    (False, False)
    """

    def __init__(self, api: ApiConfig) -> None:
        bound = f"[{api.host}]" if ":" in api.host else api.host
        entries = api.allowed_hosts if api.allowed_hosts is not None else [bound, "localhost", "127.0.0.1"]
        self.any = "*" in entries
        self.with_port = {entry for entry in entries if _name_and_port(entry)[1] is not None}
        self.names = set(entries) - self.with_port

    def allows(self, host: str, port: int) -> bool:
        host = host.lower()
        name, given_port = _name_and_port(host)
        return self.any or host in self.with_port or (name in self.names and given_port in (None, str(port)))


class _SnapshotModels:
    """Recently loaded snapshot states, for predictions; never the live model.

    Keyed by the payload's hash too: a snapshot written again under the same id is loaded again.
    """

    def __init__(self) -> None:
        self._loaded: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, store: SnapshotStore, scope: str, snapshot_id: str) -> Any:
        key = (scope, snapshot_id, store.get(snapshot_id).sha256)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        state = store.load(snapshot_id)  # verified before unpickling
        with self._lock:
            self._loaded[key] = state
            while len(self._loaded) > LOADED_SNAPSHOTS_KEPT:
                self._loaded.popitem(last=False)
        return state


def create_app(service: Service) -> FastAPI:
    config: Config = service.config
    api = config.api
    app = FastAPI(
        title="stream",
        description="Query and steer the online models of a running stream service.",
        version="0.1.0",
    )
    loaded = _SnapshotModels()
    predicting = asyncio.Semaphore(api.max_concurrent_predicts)
    stores: dict[str, SnapshotStore] = {}
    hosts = HostCheck(api)

    @app.middleware("http")
    async def limit_predictions(request: Request, call_next: Any) -> Response:
        # Around the whole request, body parsing and the response's encoding included; one turned
        # away costs nothing, its body unread.
        if request.method != "POST" or not PREDICT_PATH.fullmatch(request.url.path):
            return await call_next(request)
        if predicting.locked():
            busy = f"{api.max_concurrent_predicts} predictions are running (api.max_concurrent_predicts)"
            return JSONResponse({"detail": busy}, status_code=503, headers={"Retry-After": "1"})
        async with predicting:
            # Events are UTF-8 JSON, here as on the topic: Python's json would also read UTF-16
            # and UTF-32 (with or without a byte-order mark), which the service dead-letters.
            body = await request.body()
            if body.startswith(b"\xef\xbb\xbf") or b"\x00" in body or not _is_utf8(body):
                return JSONResponse({"detail": "the body is not UTF-8 JSON text"}, status_code=422)
            return await call_next(request)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Response:
        # The size is known before the body is read: chunked bodies (no length) are refused.
        if "chunked" in request.headers.get("transfer-encoding", "").lower():
            return JSONResponse(
                {"detail": "send a Content-Length (chunked bodies are refused)"}, status_code=411
            )
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit():
            return JSONResponse({"detail": "invalid Content-Length"}, status_code=400)
        if int(declared) > api.max_body_bytes:
            return JSONResponse({"detail": f"body over {api.max_body_bytes} bytes"}, status_code=413)
        return await call_next(request)

    @app.middleware("http")  # added last, so it runs first
    async def check_host(request: Request, call_next: Any) -> Response:
        host = request.headers.get("host", "")
        _, port = request.scope["server"]  # the bound port, also with api.port 0
        if request.url.path not in ANY_HOST_PATHS and not hosts.allows(host, port):
            return JSONResponse(
                {"detail": f"Host {host!r} is not one of this API's names (api.allowed_hosts)"},
                status_code=421,
            )
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # The reasons without the input: NaN, Infinity and 1e400 parse, and JSON cannot echo them.
        reasons = [{key: problem[key] for key in ("loc", "msg", "type")} for problem in error.errors()]
        return JSONResponse({"detail": reasons}, status_code=422)

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if api.token is None:
            raise HTTPException(403, "state-changing endpoints are disabled: set api.token in the config")
        expected = f"Bearer {api.token.get_secret_value()}"
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def scope_of(partition: str | None) -> str:
        scopes = list_scopes(config.snapshots)
        if partition is None:
            owned = service.status.latest.partitions
            if len(owned) == 1:
                return next(iter(owned))
            if len(scopes) == 1:
                return scopes[0]
            raise HTTPException(400, f"say which partition (?partition=...): one of {scopes}")
        if partition not in scopes:
            raise HTTPException(404, f"no snapshots for partition {partition!r}; known: {scopes}")
        return partition

    def store_for(scope: str) -> SnapshotStore:
        """The scope's store, kept: its index of manifests serves every later request."""
        if scope not in stores:
            try:
                stores.setdefault(scope, SnapshotStore.from_config(config.snapshots, scope))
            except ConfigError as error:  # the signing key file cannot be used
                raise HTTPException(500, str(error)) from None
        return stores[scope]

    def on_service_thread(command: Any) -> Any:
        try:
            return service.submit(command)
        except NotOwnedError as error:
            raise HTTPException(409, str(error)) from None
        except SnapshotError as error:
            raise HTTPException(404 if isinstance(error, SnapshotNotFound) else 422, str(error)) from None
        except TimeoutError:
            raise HTTPException(503, "the service did not answer in time (is it recovering?)") from None

    @app.get(
        "/health",
        summary="Liveness: the service loop comes round and makes progress (503 once it has stalled "
        "or keeps failing)",
    )
    def health() -> JSONResponse:
        # A client call that never returns (say, a Kafka client bug) stops the loop without
        # crashing the process; this is how a supervisor's liveness probe can tell.
        stalled = time.monotonic() - service.alive_at
        if stalled > service.config.service.stall_seconds:
            return JSONResponse({"status": "stalled", "seconds": round(stalled, 1)}, status_code=503)
        status = service.status.latest
        if status.failures_in_a_row >= service.config.service.unhealthy_after_failures:
            body = {
                "status": "failing",
                "failures_in_a_row": status.failures_in_a_row,
                "reason": status.last_failure,
            }
            return JSONResponse(body, status_code=503)
        if status.dead_letter_alarm is not None:
            # Running, but most events are refused: a restart would not help, an operator would.
            return JSONResponse({"status": "degraded", "reason": status.dead_letter_alarm})
        return JSONResponse({"status": "ok"})

    @app.get("/ready", summary="Readiness: Kafka connected, partitions assigned, models loaded")
    def ready() -> JSONResponse:
        status = service.status.latest
        body = {"ready": status.ready, "connected": status.connected, "partitions": sorted(status.partitions)}
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(service.telemetry.exposition(), media_type="text/plain; version=0.0.4")

    @app.get(
        "/api/stats",
        summary="Counters, throughput and lag history, per-partition metrics and history",
        response_model=ServiceStatus,
    )
    def stats() -> ServiceStatus:
        return service.status.latest

    @app.get("/api/drift", summary="Drifts and the policy's decisions with the candidates' scores")
    def drift() -> dict[str, Any]:
        return {
            scope: partition.model_dump(include={"drifts", "warnings", "rollbacks", "resets", "decisions"})
            for scope, partition in service.status.latest.partitions.items()
        }

    @app.get(
        "/api/snapshots", summary="Snapshot manifests, oldest first", response_model=list[SnapshotManifest]
    )
    def list_snapshots(
        partition: str | None = None,
        reason: str | None = None,
        pinned: bool | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[SnapshotManifest]:
        manifests = store_for(scope_of(partition)).list(reason=reason, pinned=pinned)
        return [
            m
            for m in manifests
            if (since is None or m.created_at >= since) and (until is None or m.created_at <= until)
        ]

    @app.get(
        "/api/snapshots/{snapshot_id}", summary="One snapshot's manifest", response_model=SnapshotManifest
    )
    def get_snapshot(snapshot_id: str, partition: str | None = None) -> SnapshotManifest:
        try:
            return store_for(scope_of(partition)).get(snapshot_id)
        except SnapshotError as error:
            raise HTTPException(404, str(error)) from None

    @app.post(
        "/api/snapshots/{snapshot_id}/predict",
        summary="Predictions from a snapshot's model; no learning, the live model untouched",
        response_model=PredictResponse,
        responses={503: {"description": "api.max_concurrent_predicts are running: retry after Retry-After"}},
    )
    def predict(
        snapshot_id: str, body: EventModel | list[EventModel], partition: str | None = None
    ) -> PredictResponse:
        events = body if isinstance(body, list) else [body]
        if not events or len(events) > api.max_events_per_request:
            raise HTTPException(413, f"send 1 to {api.max_events_per_request} events per request")
        scope = scope_of(partition)
        store = store_for(scope)
        try:
            state = loaded.get(store, scope, snapshot_id)
        except SnapshotError as error:
            raise HTTPException(404 if isinstance(error, SnapshotNotFound) else 422, str(error)) from None
        engine = Engine(config, store, state)
        predictions = []
        for number, event_model in enumerate(events, start=1):
            try:
                event = event_model.to_event(config.model.task)
            except InvalidEvent as error:
                raise HTTPException(422, f"event {number}: {error}") from None
            event.id = event.id or str(number)
            try:
                predictions.append(engine.predict(event))
            except Exception as error:  # the model refuses the event; River raises anything
                raise HTTPException(
                    422, f"event {number}: the model cannot predict it: {type(error).__name__}: {error}"
                ) from None
        return PredictResponse(snapshot=snapshot_id, predictions=predictions)

    @app.post(
        "/api/snapshots",
        summary="Take a snapshot of the live model now",
        response_model=SnapshotManifest,
        dependencies=[Depends(require_token)],
    )
    def take_snapshot(partition: str | None = None) -> SnapshotManifest:
        scope = scope_of_owned(partition)
        return on_service_thread(lambda svc: svc.take_snapshot(scope))

    @app.post(
        "/api/snapshots/{snapshot_id}/pin",
        summary="Pin (or with ?pinned=false unpin) a snapshot",
        response_model=SnapshotManifest,
        dependencies=[Depends(require_token)],
    )
    def pin(snapshot_id: str, partition: str | None = None, pinned: bool = True) -> SnapshotManifest:
        scope = scope_of_owned(partition)
        return on_service_thread(lambda svc: svc.pin(scope, snapshot_id, pinned))

    @app.post(
        "/api/snapshots/{snapshot_id}/rollback",
        summary="Make a snapshot's model the live one (committed at once)",
        response_model=RollbackResponse,
        dependencies=[Depends(require_token)],
    )
    def rollback(snapshot_id: str, partition: str | None = None) -> RollbackResponse:
        scope = scope_of_owned(partition)
        manifest = on_service_thread(lambda svc: svc.rollback(scope, snapshot_id))
        return RollbackResponse(
            rolled_back_to=snapshot_id, snapshot=manifest, model_version=manifest.model_version
        )

    def scope_of_owned(partition: str | None) -> str:
        owned = sorted(service.status.latest.partitions)
        if partition is None:
            if len(owned) != 1:
                raise HTTPException(400, f"say which partition (?partition=...): this instance owns {owned}")
            return owned[0]
        if partition not in owned:
            raise HTTPException(409, f"this instance does not own {partition!r}; it owns {owned}")
        return partition

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


class ApiServer:
    """uvicorn in a daemon thread; ``port`` is the bound port (useful with ``api.port: 0``)."""

    def __init__(self, service: Service) -> None:
        api = service.config.api
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(service), host=api.host, port=api.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, name="api", daemon=True)

    def start(self, timeout: float = 10.0) -> int:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            raise RuntimeError("the HTTP API did not start (is the port taken?)")
        return self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
