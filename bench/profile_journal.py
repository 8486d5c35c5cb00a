"""CPU profile of the journal import on PostgreSQL: where the importing process spends its CPU.

    .venv/bin/python bench/profile_journal.py [--rows 10000] [--cards 10000] [--batch 500] [--top 40] [--no-profile]

Imports a file of ``--rows`` rows (the shape of bench_journal.py's) into a fresh database, in this
process, and prints the process's user + system CPU seconds per 10,000 rows, the database backend's CPU
(read from /proc when the server runs on this machine), and cProfile's top functions by own time. On a
shared, loaded machine the CPU seconds are the number to compare, not the wall time.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import tempfile
import time
from pathlib import Path

from bench_journal import backend_cpu, write_journal
from common import seed_cards, temp_database
from sqlalchemy import create_engine, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--cards", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--batch", type=int, default=500, help="rows per transaction (journal import --batch)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker threads (KKMTRANSFER_JOURNAL_JOBS); cProfile sees the reading thread only")
    parser.add_argument("--again", action="store_true", help="profile loading the same file a second time")
    parser.add_argument("--no-profile", action="store_true", help="CPU seconds only, without cProfile")
    args = parser.parse_args()

    from kkmtransfer.app import create_billing
    from kkmtransfer.config import Settings
    from kkmtransfer.service_layer.journal import JournalImport

    with tempfile.TemporaryDirectory() as tmp, temp_database("kkmprof_journal") as url:
        path = Path(tmp) / "journal.csv"
        write_journal(path, args.rows, args.cards)
        engine = create_engine(url, pool_size=args.jobs, max_overflow=0)
        seed_cards(engine, args.cards)
        import os

        os.environ["KKMTRANSFER_DATABASE_URL"] = url
        billing = create_billing(Settings.from_env(), engine=engine)
        importer = JournalImport(billing, batch=args.batch, jobs=args.jobs)
        if args.again:
            importer.import_file(path)
        conns = [engine.connect() for _ in range(args.jobs)]  # the pool's connections: the import's backends
        backends = [c.execute(text("SELECT pg_backend_pid()")).scalar_one() for c in conns]
        for c in conns:
            c.close()

        def servers_cpu():
            values = [backend_cpu(b) for b in backends]
            return None if None in values else sum(values)

        server0 = servers_cpu()
        own0 = resource.getrusage(resource.RUSAGE_SELF)
        wall0 = time.perf_counter()
        profiler = None if args.no_profile else cProfile.Profile()
        if profiler:
            profiler.enable()
        summary = importer.import_file(path)
        if profiler:
            profiler.disable()
        wall = time.perf_counter() - wall0
        own1 = resource.getrusage(resource.RUSAGE_SELF)
        server1 = servers_cpu()
        cpu = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
        print(summary)
        print(f"{args.rows:,} rows{' (again)' if args.again else ''}: wall {wall:.2f} s, importing process CPU "
              f"{cpu:.2f} s = {cpu * 10_000 / args.rows:.2f} s per 10,000 rows"
              + (" (with cProfile's overhead)" if profiler else ""))
        if server0 is not None and server1 is not None:
            print(f"database backend CPU ({args.jobs} backend(s)) {server1 - server0:.2f} s = "
                  f"{(server1 - server0) * 10_000 / args.rows:.2f} s per 10,000 rows")
        print(f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
              f"(batch {args.batch}, jobs {args.jobs})")
        print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        engine.dispose()
        time.sleep(1.5)  # the backends' table statistics reach the shared counters within a second
        with create_engine(url).connect() as conn:
            upd, hot = conn.execute(text("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                         "WHERE relname = 'lots'")).one()
        print(f"lots: {upd:,} row updates, {hot:,} of them HOT ({hot / upd if upd else 0:.0%})")
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
