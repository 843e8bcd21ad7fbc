"""The checkpoint and garbage-collector benchmarks run and print what they measure, side by side
with their baseline from the same process."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests import REPO_ROOT

pytestmark = pytest.mark.benchmark


def _run(*arguments: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_checkpoint_benchmark_times_a_checkpoint_and_the_former_deep_copy_at_each_point():
    arguments = ("--events", "600", "--every", "300", "--repeats", "2", "--models", "lr")
    output = _run("benchmarks.checkpoint", *arguments)
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+) MB$", output, re.MULTILINE)
    assert [int(row[0]) for row in rows] == [300, 600]
    for _, now_ms, before_ms, ratio, size_mb in rows:
        assert float(now_ms) > 0 and float(before_ms) > 0 and float(size_mb) > 0
        assert float(ratio) == pytest.approx(float(now_ms) / float(before_ms), abs=0.02)


def test_the_collector_benchmark_runs_the_loop_frozen_and_not_and_times_each_generation():
    output = _run("benchmarks.collector", "--events", "3000", "--pairs", "2", "--models", "lr")
    tracked = int(re.search(r"(\d+) objects tracked before the first run", output).group(1))
    assert tracked > 50_000  # it holds what the service holds: the modules
    for label in ("nothing frozen", "frozen at start"):
        (row,) = re.findall(rf"^\s+{label}\s+(\d+) ev/s; in collections: (.*)$", output, re.MULTILINE)
        assert int(row[0]) > 0 and len(re.findall(r"gen\d \d+ x [\d.]+ s", row[1])) == 3
    pairs = re.search(r"frozen / nothing frozen: ([\d.]+) \(pairs: (.*)\)", output)
    assert float(pairs.group(1)) > 0 and len(pairs.group(2).split(", ")) == 2
