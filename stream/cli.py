"""The ``stream`` command line (typer): replay files, inspect snapshots, run the demo and service."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from stream.config import Config, ConfigError, load_config
from stream.models import ModelError
from stream.snapshots import SnapshotError, SnapshotStore

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


def _load(config_path: Path | None, **overrides: Any) -> Config:
    try:
        return load_config(config_path, {key: value for key, value in overrides.items() if value is not None})
    except ConfigError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@app.callback()
def main(
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


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
    snapshots: Annotated[Path | None, typer.Option(help="Snapshot directory (overrides config).")] = None,
) -> None:
    """Run the engine over a file of events, without Kafka: predict, then learn, for each event.

    Example: stream replay events.jsonl -c config.yaml --output predictions.jsonl --summary summary.json
    """
    from stream.replay import replay_file

    config = _load(config_path, **{"snapshots.directory": snapshots})
    total = None if str(input_path) == "-" else _count_lines(input_path)
    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=total is None) as progress:
        task = progress.add_task("replay", total=total)

        def on_progress(position: int) -> None:
            if position % 1000 == 0:
                progress.update(task, completed=position)

        try:
            result = replay_file(input_path, config, output, dead_letters, on_progress)
        except (ModelError, FileNotFoundError) as error:
            raise _fail(str(error)) from None
    text = json.dumps(result, indent=2, default=str)
    if summary:
        summary.write_text(text + "\n")
    _print_summary(result)


def _count_lines(path: Path) -> int | None:
    try:
        with open(path, "rb") as handle:
            return sum(1 for _ in handle)
    except OSError:
        return None


def _print_summary(result: dict[str, Any]) -> None:
    table = Table(title="summary", show_header=False)
    for key in ("events", "labelled", "errors", "warnings", "drifts", "snapshots", "rollbacks", "resets"):
        table.add_row(key, str(result[key]))
    for name, value in result["metrics"].items():
        table.add_row(name, f"{value:.4f}")
    out.print(table)


def _store(config_path: Path | None, directory: Path | None) -> SnapshotStore:
    config = _load(config_path, **{"snapshots.directory": directory})
    return SnapshotStore.from_config(config.snapshots)


DirectoryOption = Annotated[Path | None, typer.Option("--dir", help="Snapshot directory (overrides config).")]


@snapshots_app.command("list")
def snapshots_list(
    config_path: ConfigOption = None,
    directory: DirectoryOption = None,
    reason: Annotated[str | None, typer.Option(help="Only this reason (drift, warning, ...).")] = None,
    pinned: Annotated[bool | None, typer.Option("--pinned/--unpinned", help="Only (un)pinned.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List snapshots, oldest first.

    Example: stream snapshots list --reason drift
    """
    manifests = _store(config_path, directory).list(reason=reason, pinned=pinned)
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
    verify: Annotated[bool, typer.Option(help="Also check the payload's hash (no unpickling).")] = True,
) -> None:
    """Print a snapshot's manifest (JSON), after verifying its payload.

    Example: stream snapshots show 00000003-drift
    """
    store = _store(config_path, directory)
    try:
        manifest = store.verify(snapshot_id)[0] if verify else store.get(snapshot_id)
    except SnapshotError as error:
        raise _fail(str(error)) from None
    print(manifest.model_dump_json(indent=2))


@snapshots_app.command("pin")
def snapshots_pin(
    snapshot_id: Annotated[str, typer.Argument(metavar="ID")],
    config_path: ConfigOption = None,
    directory: DirectoryOption = None,
    unpin: Annotated[bool, typer.Option("--unpin", help="Remove the pin instead.")] = False,
) -> None:
    """Pin a snapshot so retention never removes it (or --unpin).

    Example: stream snapshots pin 00000003-drift
    """
    try:
        manifest = _store(config_path, directory).pin(snapshot_id, pinned=not unpin)
    except SnapshotError as error:
        raise _fail(str(error)) from None
    print(f"{manifest.id}: pinned={manifest.pinned}")


@snapshots_app.command("delete")
def snapshots_delete(
    snapshot_id: Annotated[str, typer.Argument(metavar="ID")],
    config_path: ConfigOption = None,
    directory: DirectoryOption = None,
) -> None:
    """Delete a snapshot.

    Example: stream snapshots delete 00000002-warning
    """
    try:
        _store(config_path, directory).delete(snapshot_id)
    except SnapshotError as error:
        raise _fail(str(error)) from None
    print(f"deleted {snapshot_id}")


@app.command("config")
def show_config(config_path: ConfigOption = None) -> None:
    """Print the effective configuration (file, defaults and STREAM__* variables) as YAML.

    Example: STREAM__DRIFT__POLICY=rollback stream config -c config.yaml
    """
    config = _load(config_path)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
