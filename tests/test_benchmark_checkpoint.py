"""The checkpoint benchmark runs and prints what it measures, beside its baseline from the same
process."""

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
        # The times are printed to 0.1 ms, the ratio from the times unrounded: within their rounding.
        now, before = float(now_ms), float(before_ms)
        lowest, highest = (now - 0.05) / (before + 0.05), (now + 0.05) / (before - 0.05)
        assert lowest - 0.005 <= float(ratio) <= highest + 0.005
