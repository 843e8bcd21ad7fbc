from __future__ import annotations

import gc
import json
import logging

import httpx
import pytest
from typer.testing import CliRunner

from stream.cli import app
from stream.config import Config, KafkaConfig
from stream.datasets import as_event, recurring_concepts
from stream.snapshots import SnapshotStore

runner = CliRunner()


def _events_file(tmp_path, segment=1500):
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(as_event(r)) for r in recurring_concepts(segment, (0, 2, 0))]
    lines.append('{"x": "oops"}')
    path.write_text("\n".join(lines) + "\n")
    return path


def test_replay_writes_predictions_dead_letters_and_a_summary(tmp_path):
    events = _events_file(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  pipeline: [tree.HoeffdingTreeClassifier]\n")
    result = runner.invoke(
        app,
        [
            "replay",
            str(events),
            "-c",
            str(config),
            "--output",
            str(tmp_path / "p.jsonl"),
            "--summary",
            str(tmp_path / "s.json"),
            "--dead-letters",
            str(tmp_path / "d.jsonl"),
            "--snapshots",
            str(tmp_path / "snaps"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "s.json").read_text())
    for key in ("events", "labelled", "errors", "metrics", "drifts", "snapshots", "rollbacks"):
        assert key in summary
    assert summary["events"] == 4500 and summary["errors"] == 1
    assert 0.5 < summary["metrics"]["Accuracy"] < 1.0
    predictions = (tmp_path / "p.jsonl").read_text().splitlines()
    assert len(predictions) == 4500
    assert json.loads(predictions[0])["id"] == "e-1"
    assert "'x' must be an object" in (tmp_path / "d.jsonl").read_text()
    assert "Accuracy" in result.output


def test_replay_reads_csv(tmp_path):
    path = tmp_path / "events.csv"
    rows = ["id,a,b,y"] + [
        f"r{i},{i % 5},{'red' if i % 2 else 'blue'},{str(i % 2 == 0).lower()}" for i in range(300)
    ]
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "p.jsonl"
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  pipeline: [tree.HoeffdingTreeClassifier]\n")
    arguments = [
        "replay",
        str(path),
        "-c",
        str(config),
        "--output",
        str(out),
        "--snapshots",
        str(tmp_path / "s"),
    ]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    last = json.loads(out.read_text().splitlines()[-1])
    assert last["id"] == "r299" and last["y"] is False


def test_a_bad_config_key_is_named_and_exits_2(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("drift:\n  polcy: best\n")
    result = runner.invoke(app, ["replay", str(_events_file(tmp_path, 10)), "-c", str(config)])
    assert result.exit_code == 2
    assert "drift.polcy" in result.output


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def snapshot_directory(request, tmp_path, monkeypatch) -> str:
    """A local folder, or a bucket on the real S3 server with its settings in the environment."""
    if request.param == "local":
        return str(tmp_path / "snaps")
    s3, bucket = request.getfixturevalue("s3"), request.getfixturevalue("s3_bucket")
    for name, value in (
        ("AWS_ACCESS_KEY_ID", s3.access_key),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key),
        ("STREAM__SNAPSHOTS__S3__ENDPOINT_URL", s3.endpoint_url),
        ("STREAM__SNAPSHOTS__HMAC_KEY", "shared"),
    ):
        monkeypatch.setenv(name, value)
    return f"s3://{bucket}/snaps"


def test_snapshot_commands_list_show_pin_and_delete(tmp_path, snapshot_directory):
    events = _events_file(tmp_path)
    snaps = snapshot_directory
    replayed = runner.invoke(app, ["replay", str(events), "--snapshots", snaps])
    assert replayed.exit_code == 0, replayed.output
    listed = runner.invoke(app, ["snapshots", "list", "--dir", str(snaps), "--json"])
    manifests = json.loads(listed.output)
    assert manifests and all(m["reason"] == "drift" or m["reason"] == "rollback" for m in manifests)
    first = manifests[0]["id"]
    shown = runner.invoke(app, ["snapshots", "show", first, "--dir", str(snaps)])
    assert json.loads(shown.output)["id"] == first
    assert "pinned=True" in runner.invoke(app, ["snapshots", "pin", first, "--dir", str(snaps)]).output
    assert runner.invoke(app, ["snapshots", "delete", first, "--dir", str(snaps)]).exit_code == 0
    missing = runner.invoke(app, ["snapshots", "show", first, "--dir", str(snaps)])
    assert missing.exit_code == 1 and "no snapshot" in missing.output


def test_every_command_has_help_with_an_example():
    commands = [["replay"], ["serve"], ["publish"], ["demo"], ["config"]]
    commands += [["snapshots", name] for name in ("list", "show", "pin", "delete", "rollback")]
    for command in commands:
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Example" in result.output, command


@pytest.fixture
def logger_levels():
    names = ("", "kafka", "stream", "connectors")
    saved = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def test_other_libraries_log_warnings_only_unless_the_level_is_debug(tmp_path, logger_levels):
    assert runner.invoke(app, ["config"]).exit_code == 0
    assert logging.getLogger("kafka.conn").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("stream.service").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("connectors.kafka").getEffectiveLevel() == logging.INFO

    assert runner.invoke(app, ["--log-level", "DEBUG", "config"]).exit_code == 0
    assert logging.getLogger("kafka.conn").getEffectiveLevel() == logging.DEBUG
    assert runner.invoke(app, ["--log-level", "loud", "config"]).exit_code == 2


# -- a configuration that can never work stops every command at start, naming its key -------------

# Each passed start-up once and then failed inside the service loop, which took it for a lost
# broker and recovered about once a second for ever.
PERMANENT_CONFIG_ERRORS = {
    "unknown pipeline class": (
        "model:\n  pipeline: [preprocessing.StandardScaler, linear_model.Nope]\n",
        "model.pipeline[1]: 'river.linear_model' has no class 'Nope'",
    ),
    "parameter of the wrong kind": (
        "model:\n  pipeline: [{linear_model.LogisticRegression: {l2: abc}}]\n",
        "model.pipeline[0]: linear_model.LogisticRegression parameter 'l2' takes a number, got 'abc'",
    ),
    "standard library factory": ("model:\n  factory: 'os:system'\n", "model.factory: 'os:system' is in the"),
    "unknown metric": ("metrics:\n  names: [Accuracy, Foo]\n", "metrics.names: unknown metric 'Foo'"),
    "metric class with no value": (
        "metrics:\n  names: [ConfusionMatrix]\n",
        "metrics.names: ConfusionMatrix cannot be used as a metric",
    ),
    "detector that is no detector": (
        "drift:\n  detector: drift.datasets.AirlinePassengers\n",
        "drift.detector: drift.datasets.AirlinePassengers is not a drift detector",
    ),
    "snapshot directory that is a file": (
        "snapshots:\n  directory: A_FILE\n",
        "snapshots.directory: A_FILE is not a directory",
    ),
}


@pytest.fixture
def no_kafka(monkeypatch):
    """Any use of Kafka fails the test: a configuration problem must stop a command before it."""

    def refuse(_):
        raise AssertionError("the command went on to Kafka")

    monkeypatch.setattr(KafkaConfig, "connector", refuse)


@pytest.mark.parametrize("command", ["serve", "replay", "config --check"])
@pytest.mark.parametrize(
    ("config_text", "message"), PERMANENT_CONFIG_ERRORS.values(), ids=PERMANENT_CONFIG_ERRORS.keys()
)
def test_a_config_that_cannot_work_exits_2_with_one_line_naming_the_key(
    command, config_text, message, tmp_path, no_kafka
):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    config = tmp_path / "config.yaml"
    config.write_text(config_text.replace("A_FILE", str(a_file)))
    arguments = [*command.split(), "-c", str(config)]
    if command == "replay":
        arguments.insert(1, str(_events_file(tmp_path, 10)))
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()
    assert line.startswith(f"error: {message.replace('A_FILE', str(a_file))}"), line


def test_config_check_passes_a_config_that_works(tmp_path, no_kafka):
    config = tmp_path / "config.yaml"
    directory = tmp_path / "new" / "dir"
    config.write_text(f"model:\n  factory: tests.slow_models:slow_tree\nsnapshots:\n  directory: {directory}")
    result = runner.invoke(app, ["config", "--check", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "factory: tests.slow_models:slow_tree" in result.output
    assert not directory.parent.exists()  # checked, not created


def test_a_list_from_the_environment_that_is_not_json_exits_2_naming_the_variable(monkeypatch):
    monkeypatch.setenv("STREAM__MODEL__PIPELINE", "[linear_model.LogisticRegression]")  # YAML, not JSON
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()
    assert line.startswith(
        "error: invalid configuration (environment): STREAM__MODEL__PIPELINE sets model.pipeline, "
        "which takes JSON (a list or mapping): Expecting value"
    ), line


# -- only the store's own names become paths or API URLs ------------------------------------------


def test_snapshot_commands_touch_nothing_outside_the_store(tmp_path):
    snaps, victim = tmp_path / "snaps", tmp_path / "victim"
    config = Config.model_validate({"snapshots": {"directory": str(snaps)}})
    manifest = SnapshotStore.from_config(config.snapshots, "events-0").save("ours", reason="manual")
    SnapshotStore(victim).save("theirs", reason="manual")  # a folder a wrong path could reach
    (snaps / "events-9").symlink_to(victim)
    before = sorted((path, path.read_bytes()) for path in victim.rglob("*") if path.is_file())
    attempts = [
        [command, snapshot_id, "--dir", str(snaps), "--scope", "events-0"]
        for command in ("show", "pin", "delete")
        for snapshot_id in ("../../victim/00000001-manual", str(victim / manifest.id), "..", "")
    ]
    attempts += [
        [command, manifest.id, "--dir", str(snaps), "--scope", scope]
        for command in ("show", "pin", "delete")
        for scope in ("events-9", "..", "../victim", str(victim), "events-0/..", "")
    ]
    for attempt in attempts:
        result = runner.invoke(app, ["snapshots", *attempt])
        assert result.exit_code == 1 and (
            "no snapshot" in result.output or "no partition" in result.output
        ), (
            attempt,
            result.output,
        )
    assert sorted((path, path.read_bytes()) for path in victim.rglob("*") if path.is_file()) == before
    listed = runner.invoke(
        app, ["snapshots", "list", "--dir", str(snaps), "--json"]
    )  # events-9 is no partition
    assert [m["id"] for m in json.loads(listed.output)] == [manifest.id]


def test_an_id_is_checked_before_it_goes_into_an_api_url(monkeypatch):
    requested: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requested.append(f"{request.method} {request.url.path}")
        return httpx.Response(200, json={"status": "ok"})

    client = httpx.Client
    monkeypatch.setattr(
        httpx, "Client", lambda **options: client(transport=httpx.MockTransport(answer), **options)
    )
    api = ["--api", "http://127.0.0.1:8000"]
    for command in (
        ["pin", "00000001-drift/rollback?", *api, "--token", "t"],  # would roll back instead of pinning
        ["rollback", "../00000001-drift", *api, "--token", "t"],
        ["show", "00000001-drift/../../metrics", *api],
    ):
        result = runner.invoke(app, ["snapshots", *command])
        assert result.exit_code == 1 and "no snapshot" in result.output, (command, result.output)
    assert [path for path in requested if path != "GET /health"] == []


def test_serve_refuses_at_start_a_signing_key_file_others_may_change(tmp_path):
    key_file = tmp_path / "snapshots.key"
    key_file.write_text("k" * 64)
    key_file.chmod(0o644)
    config = tmp_path / "config.yaml"
    config.write_text(f"snapshots:\n  directory: {tmp_path / 'snapshots'}\n")
    result = CliRunner().invoke(app, ["config", "-c", str(config), "--check"])
    assert result.exit_code == 2 and "chmod 600" in result.output
    key_file.chmod(0o600)
    assert CliRunner().invoke(app, ["config", "-c", str(config), "--check"]).exit_code == 0


def test_serve_collects_young_objects_less_often_than_python_does_by_default(tmp_path, monkeypatch):
    """``stream serve`` raises the collector's first threshold: at CPython's 700, a consumed batch's
    live records were promoted towards needless full collections of the heap."""
    from stream.cli import GC_YOUNG_THRESHOLD
    from stream.service import Service

    thresholds_when_run: list[tuple[int, int, int]] = []
    monkeypatch.setattr(Service, "run", lambda self: thresholds_when_run.append(gc.get_threshold()) or 0)
    config = tmp_path / "config.yaml"
    config.write_text(f"snapshots:\n  directory: {tmp_path / 'snapshots'}\napi:\n  enabled: false\n")
    before = gc.get_threshold()
    try:
        result = runner.invoke(app, ["serve", "-c", str(config)])
    finally:
        gc.set_threshold(*before)
    assert result.exit_code == 0, result.output
    assert thresholds_when_run == [(GC_YOUNG_THRESHOLD, *before[1:])] and before[0] < GC_YOUNG_THRESHOLD
