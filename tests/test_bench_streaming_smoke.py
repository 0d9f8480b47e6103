"""The streaming benchmark runs end to end on its own broker; its numbers are never checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.streaming", "--quick", *args],
        cwd=ROOT,  # bench is not an installed package: it is found from the repository root
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.timeout(240)  # above the subprocess's own 180 s, so that one reports first
def test_quick_streaming_benchmark_runs_every_workload() -> None:
    proc = run_bench()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for workload in ("RT", "W1", "W2", "W3", "W4", "W4L", "W5", "W6", "W7"):
        # Each workload prints its own line of results as it finishes.
        assert f"\n{workload} (" in proc.stdout, f"{workload} missing from:\n{proc.stdout}"
    assert "x hop p50" in proc.stdout, proc.stdout


@pytest.mark.timeout(240)
def test_quick_streaming_benchmark_with_worker_processes() -> None:
    proc = run_bench("--only", "W1", "--worker-processes", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 worker processes" in proc.stdout, proc.stdout
    assert "\nW1 (" in proc.stdout, proc.stdout
