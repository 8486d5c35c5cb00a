"""`make bench` keeps working: each benchmark runs end to end at a tiny size (nothing is timed here)."""
from __future__ import annotations

import re
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
    ("bench_session.py", ["--calls", "5", "--lines", "20"]),
    ("bench_console.py", ["--operations", "300", "--cards", "100", "--runs", "2"]),
    ("bench_certificates.py", ["--certificates", "1000", "--pins", "20"]),
])
def test_benchmark_runs(pg_admin, script, args):
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=BENCH, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("bare" in proc.stdout.lower() or "echo" in proc.stdout.lower()) and "x" in proc.stdout


def test_online_benchmark_runs(pg_admin, tmp_path):
    """gunicorn + wrk at a tiny size: every load answered without a failure, the ledger consistent, a CSV."""
    import shutil

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk)")
    proc = subprocess.run([sys.executable, str(BENCH / "bench_online.py"), "--seconds", "1", "--connections", "1,2",
                           "--cards", "50", "--workers", "1", "--threads", "2", "--scaling", "", "--rounds", "1", "--round-seconds", "1",
                           "--results", str(tmp_path)],
                          cwd=BENCH, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RESULT: all requests answered, ledger consistent" in proc.stdout
    for what in ("echo ceiling", "GetCardInfo", "RegisterOperation (sale)", "bare psycopg2 write",
                 "interleaved rounds at 2 connections", "of echo (median of 2: ",
                 "with the database on these cores (the echo's "):
        assert what in proc.stdout
    bounds = [float(x) for x in re.findall(r"at most (\d+\.\d+) with the database on these cores", proc.stdout)]
    assert len(bounds) == 2 and all(0 < b < 1 for b in bounds), bounds  # GetCardInfo's and the sale's
    # the sale's echo (spyne alone reading a sale and answering it) measured, and the sale's bound with it
    assert "echo of the sale (no database)" in proc.stdout
    stack = [float(x) for x in re.findall(r"at most (\d+\.\d+) with spyne's own reading and answering of a sale",
                                          proc.stdout)]
    assert len(stack) == 1 and 0 < stack[0] < 1, stack
    written = list(tmp_path.glob("online-*.csv"))
    assert len(written) == 1
    rows = written[0].read_text().splitlines()
    assert rows[0].startswith("section,workers") and len(rows) > 10
    for row in rows[1:]:
        assert row.split(",")[12] == "0", row  # errors


def test_in_process_microbenchmark_runs(pg_admin):
    """bench/micro_online.py (docs/performance.md §5.2): the echo, GetCardInfo and a sale answered in process."""
    proc = subprocess.run([sys.executable, str(BENCH / "micro_online.py"), "--requests", "20", "--rounds", "1",
                           "--cards", "50"], cwd=BENCH, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: float(line.split()[2]) for line in proc.stdout.splitlines()
            if line.split() and line.split()[0] in ("echo", "info", "sale")}
    assert set(rows) == {"echo", "info", "sale"} and all(v > 0 for v in rows.values())
