"""Benchmark of the journal import on PostgreSQL: rows/s and peak memory, beside a bare COPY and a bare
executemany of the same rows, in one run.

    .venv/bin/python bench/bench_journal.py [--rows 1000000] [--cards 100000] [--small 100000]

The product (``kkmtransfer journal import``) runs as a child process, so its peak RSS is its own. It
imports a ``--small`` file and then the ``--rows`` file: flat memory means the two peaks are close.
The baselines load the same file's rows into a plain staging table (no ledger, no checks): COPY, and
``executemany`` (psycopg2 execute_values, 1000 rows a page).

The schema floor: the rows the product's import wrote (operations, lots, entries, journal keys) are copied out
of its database (``COPY (SELECT ...) TO``) and, in a fresh database migrated and seeded the same way, written
again with COPY FROM into the real tables (their indexes, foreign keys and fillfactor), then the lots'
``remaining`` updated the way the import updates it (on the lots' statistics, which the import refreshes when
stale): one ``UPDATE ... FROM unnest`` per batch of the import
(``--batch``, the CLI's default 500) for the lots an earlier batch made and this batch touched, each batch
committed (synchronous commit, as the import). No reads, no locks, no client work: what the database must write
for this file with this schema. The import's time as a multiple of it says how far the rest is.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common import seed_cards, table, temp_database
from sqlalchemy import create_engine

HEADER = ("KKM;TransactionNumber;TransactionTime;Kind;CardNumber;ReceiptNumber;ReceiptSum;BonusAccrued;BonusSpent;"
          "AccumulationDelta;ReceiptCountDelta;OperationId;PromotionCode;OriginalOperationId")
KKM = str(Path(sys.executable).parent / "kkmtransfer")


def write_journal(path: Path, rows: int, cards: int) -> None:
    """Sales spread over the cards; every other row carries an OperationId, every tenth spends a bit."""
    t0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone(timedelta(hours=3)))
    with open(path, "w", encoding="utf-8") as f:
        f.write(HEADER + "\n")
        for i in range(rows):
            card = f"C{(i * 7919) % cards + 1:07d}"
            op_id = str(uuid.UUID(int=i + 1, version=4)) if i % 2 else ""
            spent = "0.50" if i % 10 == 9 and i >= cards else "0"  # every card has 5.00 by then
            f.write(f"K{i % 300};{i};{(t0 + timedelta(seconds=i)).isoformat()};Sale;{card};R{i};"
                    f"{100 + i % 900}.00;5.00;{spent};;;{op_id};;\n")


def import_with_product(url: str, path: Path) -> tuple[float, int, float]:
    """(seconds, peak RSS in KiB, CPU seconds) of `kkmtransfer journal import` in its own process. The CPU
    is the process's user + system time and its children's (the worker processes): on a loaded machine it
    says more than the wall time. The peak RSS is the largest of the process and its workers (each a
    process of its own). The database server's CPU is not in it."""
    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=url)
    code = ("import resource, sys; from kkmtransfer.cli import main\n"
            "try:\n    main(['journal', 'import', sys.argv[1]])\nexcept SystemExit as e:\n    code = e.code\n"
            "own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print('PEAK_RSS_KIB', max(own.ru_maxrss, kids.ru_maxrss), file=sys.stderr)\n"
            "print('CPU_S', own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime, file=sys.stderr)\n"
            "sys.exit(code or 0)")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"import failed:\n{proc.stdout}\n{proc.stderr[-2000:]}")
    print("   ", proc.stdout.strip())
    peak = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KIB")][0]
    cpu = [float(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("CPU_S")][0]
    return seconds, peak, cpu


STAGING = ("CREATE TABLE staging (kkm text, txn text, txn_time timestamptz, kind text, card text, receipt text, "
           "receipt_sum numeric(14,2), accrued numeric(14,2), spent numeric(14,2), acc text, cnt text, "
           "op_id text, promo text, orig text)")


def bare_load(url: str, path: Path, load) -> tuple[float, float]:
    """(seconds, this process's CPU seconds) that ``load(cursor, file)`` takes to put the file's rows into
    an empty staging table."""
    engine = create_engine(url)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("DROP TABLE IF EXISTS staging")
        cur.execute(STAGING)
        raw.commit()
        start, cpu = time.perf_counter(), time.process_time()
        with open(path, encoding="utf-8") as f:
            load(cur, f)
        raw.commit()
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        raw.close()
        engine.dispose()


def copy_rows(cur, f) -> None:
    cur.copy_expert("COPY staging FROM STDIN WITH (FORMAT csv, DELIMITER ';', HEADER true)", f)


def executemany_rows(cur, f) -> None:
    from psycopg2.extras import execute_values

    next(f)
    page = []
    for line in f:
        page.append([v or None for v in line.rstrip("\n").split(";")])
        if len(page) == 1000:
            execute_values(cur, "INSERT INTO staging VALUES %s", page)
            page = []
    if page:
        execute_values(cur, "INSERT INTO staging VALUES %s", page)


FLOOR_TABLES = ("operations", "lots", "entries", "journal_keys")


def backend_cpu(pid: int) -> float | None:
    """user + system seconds of a local backend, from /proc (None when the server is elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dump_written(url: str, folder: Path, rows_per_batch: int) -> list[list[tuple[int, int]]]:
    """Copy out what the import wrote (one file per table) and answer the lots' updates per batch of the
    import: [(lot id, its remaining)] for each batch, the lots made by an earlier batch that the batch
    touched. A row's batch is its place in the file: the journal's rows are one second apart, in order."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            cur = raw.cursor()
            for name in FLOOR_TABLES:
                with open(folder / f"{name}.copy", "w", encoding="utf-8") as f:
                    cur.copy_expert(f"COPY (SELECT * FROM {name} ORDER BY 1) TO STDOUT", f)
            updates = conn.exec_driver_sql(
                "WITH o AS (SELECT id, (rank() OVER (ORDER BY operation_time, id) - 1) / %(b)s AS batch "
                "           FROM operations) "
                "SELECT eo.batch, l.id, l.remaining FROM entries e JOIN o eo ON eo.id = e.operation_id "
                "JOIN lots l ON l.id = e.lot_id JOIN o lo ON lo.id = l.origin_operation_id "
                "WHERE lo.batch < eo.batch GROUP BY eo.batch, l.id, l.remaining ORDER BY eo.batch, l.id",
                {"b": rows_per_batch}).all()
    finally:
        engine.dispose()
    batches: dict[int, list[tuple[int, int]]] = {}
    for batch, lot_id, remaining in updates:
        batches.setdefault(batch, []).append((lot_id, remaining))
    return [batches[b] for b in sorted(batches)]


def schema_floor(url: str, folder: Path, updates: list[list[tuple[int, int]]]) -> tuple[float, float | None, int,
                                                                                   list[tuple]]:
    """(seconds, the backend's CPU seconds, rows written, steps) of writing the dumped rows into this database's
    real tables with COPY, then the lots' updates, one UPDATE ... FROM unnest and one commit per batch. Each step
    is (what, rows, seconds, backend CPU seconds or None)."""
    engine = create_engine(url)
    written = 0
    steps = []

    def step(what, rows, t0, c0):
        c1 = backend_cpu(pid)
        steps.append((what, rows, time.perf_counter() - t0, c1 - c0 if c0 is not None and c1 is not None else None))
    try:
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
            raw.commit()
            cpu0 = backend_cpu(pid)
            start = time.perf_counter()
            for name in FLOOR_TABLES:
                t0, c0 = time.perf_counter(), backend_cpu(pid)
                with open(folder / f"{name}.copy", encoding="utf-8") as f:
                    cur.copy_expert(f"COPY {name} FROM STDIN", f)
                    written += cur.rowcount
                    step(f"COPY {name}", cur.rowcount, t0, c0)
            t0, c0 = time.perf_counter(), backend_cpu(pid)
            raw.commit()
            step("COMMIT", 0, t0, c0)
            # the updates planned on the lots' statistics, as the import's are (it refreshes them when stale)
            t0, c0 = time.perf_counter(), backend_cpu(pid)
            cur.execute("ANALYZE lots")
            raw.commit()
            step("ANALYZE lots", 0, t0, c0)
            t0, c0, n = time.perf_counter(), backend_cpu(pid), 0
            for batch in updates:
                cur.execute("UPDATE lots l SET remaining = v.r FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, r) "
                            "WHERE l.id = v.id", ([i for i, _ in batch], [r for _, r in batch]))
                n += cur.rowcount
                raw.commit()
            written += n
            step(f"UPDATE lots FROM unnest + COMMIT, x{len(updates)}", n, t0, c0)
            seconds = time.perf_counter() - start
            cpu1 = backend_cpu(pid)
        finally:
            raw.close()
    finally:
        engine.dispose()
    return seconds, (cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None), written, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--cards", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500, help="the import's batch (the CLI's default), for the floor")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big.csv", Path(tmp) / "small.csv"
        write_journal(big, args.rows, args.cards)
        write_journal(small, args.small, args.cards)
        load_before = os.getloadavg()
        print(f"journal import benchmark: {args.rows:,} rows ({big.stat().st_size / 2**20:.0f} MiB) over "
              f"{args.cards:,} cards, PostgreSQL")
        with temp_database("kkmbench_journal") as url:
            engine = create_engine(url)
            seed_cards(engine, args.cards)
            engine.dispose()
            t_small, rss_small, cpu_small = import_with_product(url, small)
        with temp_database("kkmbench_journal") as url:
            engine = create_engine(url)
            seed_cards(engine, args.cards)
            engine.dispose()
            t_big, rss_big, cpu_big = import_with_product(url, big)
            updates = dump_written(url, Path(tmp), args.batch)
            t_again, _, cpu_again = import_with_product(url, big)  # the same file again: all AlreadyApplied
            t_copy, cpu_copy = bare_load(url, big, copy_rows)
            t_many, cpu_many = bare_load(url, big, executemany_rows)
        with temp_database("kkmbench_journal") as url:  # the schema floor: the same writes, nothing else
            engine = create_engine(url)
            seed_cards(engine, args.cards)
            engine.dispose()
            t_floor, db_cpu_floor, floor_rows, floor_steps = schema_floor(url, Path(tmp), updates)

        def per10k(cpu: float, n: int) -> str:
            return f"{cpu * 10_000 / n:.3f}"

        rows = [
            ("product: journal import", f"{t_big:.1f}", f"{args.rows / t_big:,.0f}", f"{t_big / t_copy:.0f}x",
             per10k(cpu_big, args.rows), f"{args.rows / cpu_big:,.0f}", f"{rss_big / 1024:.0f} MiB"),
            ("product: same file again (no-op)", f"{t_again:.1f}", f"{args.rows / t_again:,.0f}",
             f"{t_again / t_copy:.0f}x", per10k(cpu_again, args.rows), f"{args.rows / cpu_again:,.0f}", ""),
            (f"product: {args.small:,}-row file", f"{t_small:.1f}", f"{args.small / t_small:,.0f}", "",
             per10k(cpu_small, args.small), f"{args.small / cpu_small:,.0f}", f"{rss_small / 1024:.0f} MiB"),
            ("bare COPY into a staging table", f"{t_copy:.1f}", f"{args.rows / t_copy:,.0f}", "1x",
             per10k(cpu_copy, args.rows), "", ""),
            ("bare executemany (execute_values)", f"{t_many:.1f}", f"{args.rows / t_many:,.0f}",
             f"{t_many / t_copy:.1f}x", per10k(cpu_many, args.rows), "", ""),
            ("schema floor: the import's writes, COPY + UPDATE", f"{t_floor:.1f}", f"{args.rows / t_floor:,.0f}",
             f"{t_floor / t_copy:.1f}x", "", "", ""),
        ]
        print(table(rows, ("what", "seconds", "rows/s", "time vs COPY", "client CPU s/10k rows",
                           "rows per client CPU s", "peak RSS")))
        print(f"import {args.rows / t_big:,.0f} rows/s = {t_copy / t_big:.4f} of the bare COPY's rate; "
              f"again (all duplicates) {args.rows / t_again:,.0f} rows/s = {t_copy / t_again:.4f} of it; "
              f"target 20,000 rows/s")
        print(f"schema floor {args.rows / t_floor:,.0f} rows/s ({floor_rows:,} table rows written: "
              f"{', '.join(FLOOR_TABLES)}, then {sum(map(len, updates)):,} lot updates in {len(updates)} batches of "
              f"{args.batch} rows, a commit each"
              + (f"; database backend CPU {db_cpu_floor * 10_000 / args.rows:.2f} s per 10,000 file rows"
                 if db_cpu_floor is not None else "")
              + f"); the import takes {t_big / t_floor:.1f}x the floor's time")
        print(table([(what, f"{n:,}", f"{sec:.2f}", "" if cpu is None else f"{cpu:.2f}")
                     for what, n, sec, cpu in floor_steps],
                    ("schema floor, step", "rows", "seconds", "backend CPU s")))
        print(f"client CPU (user + sys of the importing process, not the database server's): "
              f"{cpu_big * 10_000 / args.rows:.2f} s per 10,000 rows, i.e. {args.rows / cpu_big:,.0f} rows per CPU "
              f"second; the wall time on a loaded machine is the CPU time stretched by the load")
        load_after = os.getloadavg()
        print("load average (1, 5, 15 min): before " + ", ".join(f"{x:.2f}" for x in load_before)
              + "; after " + ", ".join(f"{x:.2f}" for x in load_after) + f" ({os.cpu_count()} CPUs)")
        print(f"memory: peak RSS {rss_big / 1024:.0f} MiB for {args.rows:,} rows vs {rss_small / 1024:.0f} MiB "
              f"for {args.small:,} rows (ratio {rss_big / rss_small:.2f}: flat when close to 1)")


if __name__ == "__main__":
    main()
