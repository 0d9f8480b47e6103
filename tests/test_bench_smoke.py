"""The embedded benchmark runs end to end; its numbers are never checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(180)  # above the subprocess's own 120 s, so that one reports first
def test_quick_benchmark_runs_every_workload() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.embedded", "--quick", "--store", "memory"],
        cwd=ROOT,  # bench is not an installed package: it is found from the repository root
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for workload in ("W1", "W2", "W3", "W4", "W5", "W6", "W7"):
        assert workload in proc.stdout, f"{workload} missing from:\n{proc.stdout}"


@pytest.mark.timeout(180)
def test_visibility_benchmark_runs_every_query() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.visibility", "--workflows", "1200", "--small", "300"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for query in ("newest 50", "status=completed", "attr tier=gold", "old list(limit=50)"):
        assert query in proc.stdout, f"{query} missing from:\n{proc.stdout}"
