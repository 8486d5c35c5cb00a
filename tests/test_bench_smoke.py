"""`make bench` keeps working: each benchmark runs end to end at a tiny size (nothing is timed here)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.mark.parametrize("script,args", [
    ("bench_actions.py", ["--cards", "300", "--batch", "50"]),
    ("bench_journal.py", ["--rows", "600", "--small", "200", "--cards", "100"]),
    ("bench_nightly.py", ["--lots", "2000", "--cards", "200", "--background", "1000"]),
    ("bench_certificates.py", ["--certificates", "1000", "--pins", "20"]),
])
def test_benchmark_runs(pg_admin, script, args):
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=BENCH, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bare" in proc.stdout.lower() and "x" in proc.stdout
