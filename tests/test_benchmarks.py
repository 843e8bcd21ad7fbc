"""The benchmark command runs end to end (tiny sizes: this checks that it works, not how fast)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from connectors.local_broker import REPO_ROOT


@pytest.mark.kafka
def test_the_benchmark_runs_every_path_and_writes_its_files(tmp_path):
    command = [sys.executable, "-m", "benchmarks.run", "--events", "600", "--repeats", "1",
               "--models", "lr", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "results.json").read_text())
    paths = [r["path"] for r in report["results"]]
    assert paths == ["bare", "replay", "service-eos", "service-alos", "peer-kafka-python", "peer-quix-eos",
                     "peer-quix-alos"]  # fmt: skip
    for row in report["results"]:
        assert row["events_per_second"] > 0 and row["peak_rss_mb"] > 0
    assert report["results"][0]["ratio_to_bare"] == 1.0
    assert (tmp_path / "results.png").stat().st_size > 10_000
    assert "| StandardScaler\\|LogisticRegression | service-eos |" in result.stdout
