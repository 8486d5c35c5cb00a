"""Shared pieces of the benchmarks: a throw-away PostgreSQL database and a results table."""
from __future__ import annotations

import contextlib
import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text  # noqa: E402

from kkmtransfer.adapters.migrate import upgrade  # noqa: E402

ADMIN_URL = os.environ.get("KKMTRANSFER_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def temp_database(prefix: str = "kkmbench", keep: bool = False):
    """A fresh, migrated PostgreSQL database; its URL. Dropped at the end unless ``keep``."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        upgrade(url)
        yield url
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            with admin.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def seed_cards(engine, n: int, prefix: str = "C", width: int = 7) -> None:
    """``n`` active cards PREFIX0000001.. with the default rules, in one statement."""
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO cards (number, status, holder, phone, created_at, accumulation_delay_days, "
            "count_delay_days) SELECT :p || lpad(g::text, :w, '0'), 'Active', NULL, NULL, now(), 0, 0 "
            "FROM generate_series(1, :n) g"), {"p": prefix, "w": width, "n": n})
        conn.execute(text("ANALYZE cards"))


def table(rows: list[tuple], header: tuple) -> str:
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in cells)
