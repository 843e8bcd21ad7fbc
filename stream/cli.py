"""The ``stream`` command line (typer): replay files, inspect snapshots, run the demo and service."""

from __future__ import annotations

import gc
import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from stream.config import Config, load_config
from stream.errors import ConfigError, ModelError, ModelFailure, SnapshotError
from stream.models import check_config
from stream.prequential import LearnerSummary
from stream.replay import ReplaySummary
from stream.snapshots import (
    SnapshotManifest,
    SnapshotStore,
    list_scopes,
    validate_scope,
    validate_snapshot_id,
)
from stream.supervisor import worker_count

if TYPE_CHECKING:
    import httpx

app = typer.Typer(
    help="Online learning on Kafka event streams with River: predict, publish, then learn.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
snapshots_app = typer.Typer(help="List, inspect, pin and delete model snapshots.", no_args_is_help=True)
app.add_typer(snapshots_app, name="snapshots")

console = Console(stderr=True)
# A wide table when piped: the summary must stay readable in logs and CI output.
out = Console(width=None if sys.stdout.isatty() else 160)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (defaults apply to missing keys)."),
]


def _load(config_path: Path | None, check: bool = False, **overrides: Any) -> Config:
    """The config (file, ``STREAM__*`` variables, overrides); with ``check``, also built and tried
    as a service or replay would use it (:func:`stream.models.check_config`). A problem exits 2."""
    try:
        config = load_config(
            config_path, {key: value for key, value in overrides.items() if value is not None}
        )
        if check:
            check_config(config)
    except ConfigError as error:
        console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(2) from None
    return config


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


# This project's loggers follow --log-level; every other one (kafka-python's connection and
# metadata chatter, uvicorn, httpx) stays at WARNING unless the level is debug.
OWN_LOGGERS = ("stream", "connectors", "kafka_local")
# `stream serve`'s first garbage-collector threshold (CPython's: 700); see
# _collect_young_objects_less_often.
GC_YOUNG_THRESHOLD = 10_000


def configure_logging(level: LogLevel) -> None:
    numeric = logging.getLevelName(level.value.upper())
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(numeric if level is LogLevel.debug else max(numeric, logging.WARNING))
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(numeric)


@app.callback()
def main(
    log_level: Annotated[
        LogLevel,
        typer.Option(
            case_sensitive=False,
            help="This project's log level; other libraries log warnings only, except at debug.",
        ),
    ] = LogLevel.info,
) -> None:
    configure_logging(log_level)


@app.command()
def replay(
    input_path: Annotated[
        Path, typer.Argument(metavar="INPUT", help="JSONL or CSV file of events; - for stdin.")
    ],
    config_path: ConfigOption = None,
    output: Annotated[Path | None, typer.Option(help="Write predictions here (JSONL).")] = None,
    summary: Annotated[Path | None, typer.Option(help="Write the run's summary here (JSON).")] = None,
    dead_letters: Annotated[
        Path | None, typer.Option(help="Write rejected records here (JSONL) with their reason.")
    ] = None,
    snapshots: Annotated[
        str | None, typer.Option(help="Snapshot directory or s3://bucket/prefix (overrides config).")
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="Delayed labels: a JSONL or CSV file of {id, y, ts}, merged with the events by ts "
            "(a label first at equal ts). Events without y wait for theirs (labels.* bounds)."
        ),
    ] = None,
    inline_labels: Annotated[
        bool,
        typer.Option(
            "--inline-labels",
            help="Delayed labels as records of the input itself ({id, y, ts}, no x), in file order.",
        ),
    ] = False,
) -> None:
    """Run the engine over a file of events, without Kafka: predict, then learn, for each event.

    With --labels or --inline-labels, an event without y is predicted at once and learned when its
    label comes, with the prediction made at event time (River's delayed progressive validation).

    Example: stream replay events.jsonl -c config.yaml --output predictions.jsonl --summary summary.json
    """
    if labels is not None and inline_labels:
        raise _fail("give --labels FILE or --inline-labels, not both")
    from stream.replay import replay_file

    config = _load(config_path, check=True, **{"snapshots.directory": snapshots})
    total = None if str(input_path) == "-" else _count_lines(input_path)
    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=total is None) as progress:
        task = progress.add_task("replay", total=total)

        def on_progress(position: int) -> None:
            if position % 1000 == 0:
                progress.update(task, completed=position)

        try:
            result = replay_file(input_path, config, output, dead_letters, on_progress, labels, inline_labels)
        except (ModelError, ModelFailure, FileNotFoundError) as error:
            raise _fail(str(error)) from None
    if summary:
        summary.write_text(result.model_dump_json(indent=2) + "\n")
    _print_summary(result)


def _count_lines(path: Path) -> int | None:
    try:
        with open(path, "rb") as handle:
            return sum(1 for _ in handle)
    except OSError:
        return None


def _print_summary(result: LearnerSummary) -> None:
    table = Table(title="summary", show_header=False)
    for key in ("events", "labelled", "errors", "warnings", "drifts", "snapshots", "rollbacks", "resets"):
        table.add_row(key, str(getattr(result, key)))
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    if isinstance(result, ReplaySummary) and result.labels is not None:
        for key, value in result.labels.model_dump().items():
            shown = "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
            table.add_row(f"labels: {key.replace('_', ' ')}", shown)
    out.print(table)


class _Snapshots:
    """Where ``stream snapshots`` reads and writes: the running service's API when one answers,
    else the snapshot directory itself (a rollback needs the running service)."""

    def __init__(self, config_path: Path | None, directory: str | None, scope: str | None, api: str | None,
                 token: str | None) -> None:  # fmt: skip
        self.config = _load(config_path, **{"snapshots.directory": directory})
        try:
            self.scope = None if scope is None else validate_scope(scope)
        except SnapshotError as error:
            raise _fail(str(error)) from None
        self.url = api or f"http://{self.config.api.host}:{self.config.api.port}"
        configured = self.config.api.token.get_secret_value() if self.config.api.token else None
        self.token = token or configured
        self.client = self._connect() if api or directory is None else None

    def _connect(self) -> httpx.Client | None:
        import httpx  # here: 0.15 s of every start of the service, which never calls its own API

        client = httpx.Client(base_url=self.url, timeout=30.0)
        try:
            client.get("/health", timeout=1.0).raise_for_status()
        except httpx.HTTPError:
            client.close()
            return None
        return client

    def _params(self, **params: Any) -> dict[str, Any]:
        return {k: v for k, v in {"partition": self.scope, **params}.items() if v is not None}

    def call(self, method: str, path: str, mutating: bool = False, **params: Any) -> Any:
        assert self.client is not None
        headers = {"Authorization": f"Bearer {self.token}"} if mutating and self.token else {}
        response = self.client.request(method, path, params=self._params(**params), headers=headers)
        if response.status_code >= 400:
            raise _fail(f"{self.url}{path}: {response.status_code} {response.json().get('detail')}")
        return response.json()

    def store(self) -> SnapshotStore:
        snapshots, scope = self.config.snapshots, self.scope
        try:
            if scope is None and not SnapshotStore.from_config(snapshots).list():
                scopes = [
                    found
                    for found in list_scopes(snapshots)
                    if SnapshotStore.from_config(snapshots, found).list()
                ]
                if len(scopes) > 1:
                    raise _fail(
                        f"{snapshots.directory} holds several partitions' snapshots; pick one with "
                        f"--scope: {', '.join(scopes)}"
                    )
                scope = scopes[0] if scopes else None
            return SnapshotStore.from_config(snapshots, scope)
        except (ConfigError, SnapshotError) as error:  # say, a signing key file others may read
            raise _fail(str(error)) from None


def _snapshot_id(snapshot_id: str) -> str:
    """The id if it is of the store's form: checked before it goes into a path or an API URL."""
    try:
        return validate_snapshot_id(snapshot_id)
    except SnapshotError as error:
        raise _fail(str(error)) from None


DirectoryOption = Annotated[
    str | None,
    typer.Option(
        "--dir", help="Read this snapshot directory (or s3://bucket/prefix) directly (no running service)."
    ),
]
ScopeOption = Annotated[
    str | None, typer.Option(help="A service's partition, e.g. events-0 (the only one is picked by default).")
]
ApiOption = Annotated[
    str | None, typer.Option("--api", help="The running service's API (default: from config api.host/port).")
]
TokenOption = Annotated[
    str | None,
    typer.Option(envvar="STREAM__API__TOKEN", help="Bearer token for pin and rollback (api.token)."),
]


@snapshots_app.command("list")
def snapshots_list(
    config_path: ConfigOption = None,
    directory: DirectoryOption = None,
    scope: ScopeOption = None,
    api: ApiOption = None,
    reason: Annotated[str | None, typer.Option(help="Only this reason (drift, warning, ...).")] = None,
    pinned: Annotated[bool | None, typer.Option("--pinned/--unpinned", help="Only (un)pinned.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List snapshots, oldest first (from the running service, or from --dir).

    Example: stream snapshots list --reason drift
    """
    snapshots = _Snapshots(config_path, directory, scope, api, None)
    if snapshots.client is not None:
        rows = snapshots.call("GET", "/api/snapshots", reason=reason, pinned=pinned)
        manifests = [SnapshotManifest.model_validate(row) for row in rows]
    else:
        manifests = snapshots.store().list(reason=reason, pinned=pinned)
    if as_json:
        print(json.dumps([manifest.model_dump(mode="json") for manifest in manifests], indent=2))
        return
    table = Table("id", "created", "reason", "events", "model", "metrics", "pinned")
    for manifest in manifests:
        metrics = ", ".join(f"{name}={value:.3f}" for name, value in list(manifest.metrics.items())[:2])
        table.add_row(
            manifest.id,
            manifest.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            manifest.reason,
            str(manifest.events_seen),
            f"v{manifest.model_version}",
            metrics,
            "yes" if manifest.pinned else "",
        )
    out.print(table)


@snapshots_app.command("show")
def snapshots_show(
    snapshot_id: Annotated[str, typer.Argument(metavar="ID")],
    config_path: ConfigOption = None,
    directory: DirectoryOption = None,
    scope: ScopeOption = None,
    api: ApiOption = None,
) -> None:
    """Print a snapshot's manifest (JSON); read from a directory, its payload is verified too.

    Example: stream snapshots show 00000003-drift
    """
    snapshot_id = _snapshot_id(snapshot_id)
    snapshots = _Snapshots(config_path, directory, scope, api, None)
    if snapshots.client is not None:
        print(json.dumps(snapshots.call("GET", f"/api/snapshots/{snapshot_id}"), indent=2))
        return
    try:
        print(snapshots.store().verify(snapshot_id)[0].model_dump_json(indent=2))
    except SnapshotError as error:
        raise _fail(str(error)) from None


@snapshots_app.command("pin")
def snapshots_pin(
    snapshot_id: Annotated[str, typer.Argument(metavar="ID")],
    config_path: ConfigOption = None,
    directory: DirectoryOption = None,
    scope: ScopeOption = None,
    api: ApiOption = None,
    token: TokenOption = None,
    unpin: Annotated[bool, typer.Option("--unpin", help="Remove the pin instead.")] = False,
) -> None:
    """Pin a snapshot so retention never removes it (or --unpin).

    Example: stream snapshots pin 00000003-drift
    """
    snapshot_id = _snapshot_id(snapshot_id)
    snapshots = _Snapshots(config_path, directory, scope, api, token)
    if snapshots.client is not None:
        result = snapshots.call("POST", f"/api/snapshots/{snapshot_id}/pin", mutating=True, pinned=not unpin)
        print(f"{result['id']}: pinned={result['pinned']}")
        return
    try:
        manifest = snapshots.store().pin(snapshot_id, pinned=not unpin)
    except SnapshotError as error:
        raise _fail(str(error)) from None
    print(f"{manifest.id}: pinned={manifest.pinned}")


@snapshots_app.command("delete")
def snapshots_delete(
    snapshot_id: Annotated[str, typer.Argument(metavar="ID")],
    config_path: ConfigOption = None,
    directory: DirectoryOption = None,
    scope: ScopeOption = None,
) -> None:
    """Delete a snapshot from a snapshot directory.

    Example: stream snapshots delete 00000002-warning --dir snapshots --scope events-0
    """
    snapshot_id = _snapshot_id(snapshot_id)
    try:
        _Snapshots(config_path, directory, scope, None, None).store().delete(snapshot_id)
    except SnapshotError as error:
        raise _fail(str(error)) from None
    print(f"deleted {snapshot_id}")


@snapshots_app.command("rollback")
def snapshots_rollback(
    snapshot_id: Annotated[str, typer.Argument(metavar="ID")],
    config_path: ConfigOption = None,
    scope: ScopeOption = None,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Roll the running service's model back to a snapshot (through its API; committed at once).

    Example: STREAM__API__TOKEN=secret stream snapshots rollback 00000003-drift --scope events-0
    """
    snapshot_id = _snapshot_id(snapshot_id)
    snapshots = _Snapshots(config_path, None, scope, api, token)
    if snapshots.client is None:
        raise _fail(f"no service answers at {snapshots.url}; a rollback changes a running service's model")
    result = snapshots.call("POST", f"/api/snapshots/{snapshot_id}/rollback", mutating=True)
    print(
        f"rolled back to {snapshot_id}: model v{result['model_version']}, snapshot {result['snapshot']['id']}"
    )


@app.command("config")
def show_config(
    config_path: ConfigOption = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Also build and try the model, metrics, drift detector and snapshot directory, as "
            "serve and replay do first; exit 2 naming the key of a problem.",
        ),
    ] = False,
) -> None:
    """Print the effective configuration (file, defaults and STREAM__* variables) as YAML.

    Example: STREAM__DRIFT__POLICY=rollback stream config -c config.yaml --check
    """
    config = _load(config_path, check=check)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")


@app.command()
def serve(
    config_path: ConfigOption = None,
    instance_id: Annotated[
        str | None,
        typer.Option(
            help="Stable id of this instance (default: config, then the host name, <host>-2, ... for "
            "further processes on this host). Refused if another process on this host holds it."
        ),
    ] = None,
    bootstrap_servers: Annotated[str | None, typer.Option(help="Kafka address (overrides config).")] = None,
    workers: Annotated[
        int,
        typer.Option(
            parser=worker_count,
            metavar="N|auto",
            help="Service processes in the group; one uses one core (auto: one per core). Above 1, "
            "this process supervises N workers with the instance ids <id>-w0 ... <id>-w<N-1> "
            "(<id>: --instance-id, else service.instance_id, else the host name as above; kept "
            "across restarts), forwards SIGTERM/SIGINT to them and restarts one that dies (exit 2, "
            "a config error, stops them all). Worker i serves the API on api.port + i (api.port 0: "
            "each a free port). Workers beyond the input's partition count stay idle.",
        ),
    ] = 1,
) -> None:
    """Run the service: consume events, predict, publish predictions, learn, checkpoint.

    Stops cleanly on SIGTERM or Ctrl-C (shutdown snapshot, final commit).
    Example: stream serve -c config.yaml --instance-id worker-1
    Example, every core: stream serve -c config.yaml --workers auto
    """
    from stream.instance import InstanceClaim
    from stream.service import Service

    config = _load(config_path, check=True, **{"kafka.bootstrap_servers": bootstrap_servers})
    try:
        connector = config.kafka.connector()
    except ImportError as error:
        raise _fail(str(error), 2) from None
    if workers > 1:
        raise typer.Exit(_supervise(config, config_path, instance_id, bootstrap_servers, workers))
    try:
        # Held until the process exits: no other process on this host joins the group as this one.
        claim = InstanceClaim.take(config.kafka.group_id, instance_id or config.service.instance_id)
        service = Service(config, connector, claim.instance_id)
    except (ConfigError, ModelError) as error:
        raise _fail(str(error), 2) from None
    service.install_signal_handlers()
    server = None
    if config.api.enabled:
        from stream.api import ApiServer

        server = ApiServer(service)
        port = server.start()
        logging.getLogger("stream.api").info("API and dashboard at http://%s:%d/", config.api.host, port)
    _collect_young_objects_less_often()
    try:
        code = service.run()
    except ConfigError as error:  # found only once the broker answers (say, a label topic's partitions)
        raise _fail(str(error), 2) from None
    finally:
        if server is not None:
            server.stop()
    raise typer.Exit(code)


def _collect_young_objects_less_often() -> None:
    """Raise the garbage collector's first threshold from CPython's 700 to ``GC_YOUNG_THRESHOLD``.

    The loop works on batches of consumed records, each record an object the collector tracks
    while the batch lives. At the default, a young collection came every ~140 events and the
    middle one every ~1,400, each promoting the batch's live records to the oldest generation as
    if they were long-lived; that counted towards the next full collection of the whole heap
    (~115,000 objects, 60-90 ms), made 2-4 times per 100,000 events for nothing. With the young
    generation 14 times larger, the service's collections over 100,000 events took 0.10 s against
    0.38 s, with no full collection (README, "What the garbage collector costs")."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _supervise(
    config: Config, config_path: Path | None, instance_id: str | None, bootstrap_servers: str | None,
    workers: int,
) -> int:  # fmt: skip
    """``serve --workers N``: run N ``serve --workers 1`` processes under a supervisor; its exit code."""
    from stream.instance import InstanceClaim
    from stream.supervisor import Supervisor, plan_workers

    command = [sys.executable, "-m", "stream", "--log-level"]
    command.append(logging.getLevelName(logging.getLogger("stream").getEffectiveLevel()).lower())
    command.append("serve")
    if config_path is not None:
        command += ["--config", str(config_path)]
    if bootstrap_servers is not None:
        command += ["--bootstrap-servers", bootstrap_servers]
    try:
        # The base id is held as a single process's would be: two supervisors on this host never
        # start workers of the same ids.
        base = InstanceClaim.take(config.kafka.group_id, instance_id or config.service.instance_id)
        plan = plan_workers(
            base.instance_id, workers, command, config.api.port if config.api.enabled else None
        )
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    logging.getLogger("stream.supervisor").info(
        "supervising %d workers of group %s: %s",
        workers, config.kafka.group_id, ", ".join(worker.instance_id for worker in plan),
    )  # fmt: skip
    return Supervisor(plan).run()


@app.command()
def rebuild(
    config_path: ConfigOption = None,
    partition: Annotated[
        int | None, typer.Option(help="Rebuild this partition only (default: every partition of the input).")
    ] = None,
) -> None:
    """Train each partition's model again from its examples topic (delayed labels), and put it in
    place of the partition's last checkpoint: the way across a River upgrade, whose snapshots do
    not load. Stop the service first; it restores the rebuilt models when it starts.

    Example: stream rebuild -c config.yaml
    """
    from stream.rebuild import rebuild_partition

    config = _load(config_path, check=True)
    connector = config.kafka.connector()
    count = connector.partition_count(config.kafka.input_topic)
    if count is None:
        raise _fail(f"the input topic {config.kafka.input_topic!r} does not exist", 2)
    partitions = range(count) if partition is None else [partition]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        for number in partitions:
            task = progress.add_task(f"partition {number}", total=None)

            def on_progress(learned: int, total: int, task: Any = task) -> None:
                if learned % 1000 == 0 or learned == total:
                    progress.update(task, completed=learned, total=total)

            try:
                manifest = rebuild_partition(config, connector, number, on_progress)
            except (ConfigError, SnapshotError) as error:
                raise _fail(str(error), 2 if isinstance(error, ConfigError) else 1) from None
            out.print(f"partition {number}: {manifest.id} rebuilt from {manifest.examples_learned} examples")


@app.command()
def publish(
    input_path: Annotated[
        Path, typer.Argument(metavar="FILE", help="JSONL or CSV file of events; - for stdin.")
    ],
    topic: Annotated[
        str | None, typer.Option(help="Topic to publish to (default: kafka.input_topic).")
    ] = None,
    config_path: ConfigOption = None,
    bootstrap_servers: Annotated[str | None, typer.Option(help="Kafka address (overrides config).")] = None,
    rate: Annotated[float, typer.Option(help="Events per second; 0 = as fast as possible.")] = 0.0,
) -> None:
    """Publish events to a topic, one message per JSONL line or CSV row (sent as they are: the
    service validates them and dead-letters the bad ones).

    Example: stream publish --topic events events.jsonl --rate 500
    """
    import time

    from connectors.files import read_events

    config = _load(config_path, **{"kafka.bootstrap_servers": bootstrap_servers})
    topic = topic or config.kafka.input_topic
    try:
        sink = config.kafka.connector().sink(None)
    except ImportError as error:
        raise _fail(str(error), 2) from None
    total = None if str(input_path) == "-" else _count_lines(input_path)
    started = time.monotonic()
    sent = 0
    columns = (TextColumn(f"publish to {topic}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("publish", total=total)
            for _, record in read_events(input_path):
                value = record if isinstance(record, bytes) else json.dumps(record).encode()
                sink.send(topic, value, key=_event_key(value))
                sent += 1
                if rate > 0:
                    delay = started + sent / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                if sent % 1000 == 0:
                    progress.update(task, completed=sent)
            sink.flush()
    except FileNotFoundError as error:
        raise _fail(str(error)) from None
    finally:
        sink.close()
    elapsed = time.monotonic() - started
    console.print(f"published {sent} events to {topic} in {elapsed:.1f}s ({sent / max(elapsed, 1e-9):.0f}/s)")


def _event_key(value: bytes) -> bytes | None:
    """The event's ``key`` field as the message key (same key, same partition, same model)."""
    if b'"key"' not in value:
        return None
    try:
        key = json.loads(value).get("key")
    except (ValueError, AttributeError):
        return None
    return key.encode() if isinstance(key, str) else None


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="Where the run's files go (replaced).")] = Path("demo-output"),
    events_per_concept: Annotated[int, typer.Option(help="Events per concept (A, B, A).")] = 5000,
    bootstrap_servers: Annotated[
        str | None, typer.Option(help="Use this broker instead of starting the local one.")
    ] = None,
) -> None:
    """Run the whole story: local broker, service, a drifting stream (concepts A, B, A), summary.

    Example: stream demo --events-per-concept 3000
    """
    from stream.demo import run_demo

    raise typer.Exit(run_demo(output, events_per_concept, bootstrap_servers))
