"""The benchmark command runs end to end (tiny sizes: this checks that it works, not how fast)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.paths import KAFKA_PATHS
from tests import REPO_ROOT

pytestmark = pytest.mark.kafka


def _benchmark(out, *options: str) -> tuple[dict, str]:
    command = [sys.executable, "-m", "benchmarks.run", "--repeats", "1", "--models", "lr", "--out", str(out),
               *options]  # fmt: skip
    try:  # within pytest's own timeout, so that a hang shows what the benchmark printed
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=480)
    except subprocess.TimeoutExpired as expired:
        # Bytes here, even with text=True.
        printed = b"\n".join(part or b"" for part in (expired.stdout, expired.stderr))
        pytest.fail(f"the benchmark ran over 480 s; it printed:\n{printed.decode(errors='replace')}")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((out / "results.json").read_text()), result.stdout


def test_the_benchmark_measures_throughput_on_every_path_and_writes_its_files(tmp_path):
    sizes = ("--events", "600", "--latency-seconds", "0", "--memory-events", "0", "--warm-up-events", "300")
    report, stdout = _benchmark(tmp_path, *sizes)
    assert report["warm_up"]["events"] == 300 and report["warm_up"]["events_per_second"] > 0
    assert "warm-up, not reported: 300 events" in stdout
    assert [r["path"] for r in report["results"]] == ["bare", "replay", *KAFKA_PATHS]
    for row in report["results"]:
        assert row["events_per_second"] > 0 and row["peak_rss_mb"] > 0
    kafka = [row for row in report["results"] if row["path"] in KAFKA_PATHS]
    assert all(row["cpu_us_per_event"] >= 0 and row["broker_cpu_us_per_event"] >= 0 for row in kafka)
    assert any(row["cpu_us_per_event"] > 0 for row in kafka)  # clock ticks of 10 ms: some may read 0
    assert report["results"][0]["ratio_to_bare"] == 1.0
    assert (tmp_path / "results.png").stat().st_size > 10_000
    assert "| StandardScaler\\|LogisticRegression | service-eos-confluent |" in stdout


def test_the_benchmark_measures_latency_recovery_and_memory(tmp_path):
    paths = "service-alos-confluent,peer-quix-alos"
    report, stdout = _benchmark(
        tmp_path, "--events", "2000", "--paths", paths, "--latency-seconds", "1", "--memory-events", "3000",
        "--warm-up-events", "0", "--latency-warm-up-seconds", "1",
    )  # fmt: skip
    assert "warm_up" not in report
    (warm_up,) = report["latency_warm_up"]  # one per model, before its latency runs, not among them
    assert warm_up["path"] == "service-eos-confluent" and warm_up["seconds"] == 1 and warm_up["p50_ms"] > 0
    assert "latency warm-up, not reported: service-eos-confluent" in stdout
    assert [(r["path"], r["missing"]) for r in report["latency"]] == [(p, 0) for p in paths.split(",")]
    for row in report["latency"]:
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    (recovery,) = report["recovery"]  # the service only: the peers keep no state to recover
    assert recovery["path"] == "service-alos-confluent" and 0 < recovery["seconds"] < 60
    memory = report["memory"]
    assert memory["events"] == 3000 and memory["path"] == "service-alos-confluent"
    assert memory["rss_mb_at_10_percent"] > 0 and 0 < memory["rss_mb_at_end"] <= memory["peak_rss_mb"]
    assert "SIGKILL to a new prediction" in stdout and "Memory, service-alos-confluent" in stdout
