"""The README's main-job command: the whole story on a real broker."""

from __future__ import annotations

import json

import pytest

from stream.demo import run_demo


@pytest.mark.kafka
def test_demo_runs_the_whole_story_and_reports_it(kafka, tmp_path, capsys):
    output = tmp_path / "demo"
    assert run_demo(output, segment=2000, bootstrap_servers=kafka.bootstrap_servers) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["events"] == summary["labelled"] == 6000 and summary["dead_letters"] == 3
    assert summary["drifts"] >= 1 and summary["snapshots"] >= 1
    # With labels 200 events late the policy acts on old news: it is not always ahead of no policy.
    assert summary["accuracy"] > 0.6 and summary["baseline_accuracy"] > 0.6
    printed = capsys.readouterr().out
    assert "accuracy over time" in printed and "stream snapshots list" in printed
    assert "accuracy as labels arrived" in printed and "each 200 events after its event" in printed
    assert (output / "service.log").read_text().count("stopped after 6000 predictions") == 1
