from __future__ import annotations

import json
import logging

import pytest
from typer.testing import CliRunner

from stream.cli import app
from stream.datasets import as_event, recurring_concepts

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


def test_snapshot_commands_list_show_pin_and_delete(tmp_path):
    events = _events_file(tmp_path)
    snaps = tmp_path / "snaps"
    assert runner.invoke(app, ["replay", str(events), "--snapshots", str(snaps)]).exit_code == 0
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
