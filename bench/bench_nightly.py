"""Benchmark of the nightly regulation on PostgreSQL: the product beside the bare SQL, in one run.

    .venv/bin/python bench/bench_nightly.py [--lots 1000000] [--batch N] [--cards 100000]
                                            [--background N] [--day YYYY-MM-DD] [--keep] [--profile]
    make bench                      (the same with the defaults; make bench BENCH_ARGS="--lots 20000")

What it does:
1. creates a fresh database (kkmbench_<random>; the server is KKMTRANSFER_BENCH_PG_URL, default
   postgresql+psycopg2://postgres@127.0.0.1:5432/postgres, used as the admin connection), runs the
   migrations and seeds it with set-based SQL: ``--cards`` cards, each with one seed Sale operation;
   ``--lots`` due lots, half burnt by the cutoff (remaining > 0, expires_at <= cutoff, one credit
   entry each) and half deferred lots whose start came (available_from <= cutoff, accrual_document_id
   NULL, one deferred-credit entry each); plus ``--background`` lots that are not due (never ending,
   ending later, or already posted) to show that the cost does not follow the size of the ledger.
   The sum of a lot's entries is its remaining. Then VACUUM ANALYZE;
2. copies that database (CREATE DATABASE ... TEMPLATE), so both runs start from identical data;
3. on the first copy times the product: ``Nightly(billing, batch=...).run_day(day)``, then the same
   day again (already done: it should do nothing);
4. on the second copy times the bare SQL that does the same work: single statements, no batches, one
   transaction;
5. checks that both copies agree (entries, sums, lines, lots, the ledger invariant) and prints a table
   of times and ratios measured in this run;
6. drops both databases, also on error or Ctrl-C (``--keep`` leaves them for a look).

Only the ratios mean something: absolute times depend on the machine. Seeding is timed for
information only.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, event, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from kkmtransfer.adapters import regulation  # noqa: E402
from kkmtransfer.adapters.migrate import upgrade  # noqa: E402
from kkmtransfer.app import create_billing  # noqa: E402
from kkmtransfer.config import Settings  # noqa: E402
from kkmtransfer.domain.model import DEFERRED_ROLES as DEFERRED_ROLE_LIST  # noqa: E402
from kkmtransfer.domain.model import CardStatus, Kind, Measure, Role, Source  # noqa: E402
from kkmtransfer.domain.rules import day_start  # noqa: E402
from kkmtransfer.service_layer.nightly import Nightly  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
TABLES = ("cards", "operations", "lots", "entries")
OLD_DOCUMENT = str(uuid.UUID(int=1))  # the "already posted" background lots name this Accrual document


def q(value) -> str:
    """A value of the product's enums as an SQL literal (the names come from the code, not from here)."""
    value = getattr(value, "value", value)
    return "'" + str(value).replace("'", "''") + "'"


CREDIT, CREDIT_DEFERRED, EXPIRY = q(Role.CREDIT), q(Role.CREDIT_DEFERRED), q(Role.EXPIRY)
DEFERRED_ROLES = ", ".join(q(r) for r in DEFERRED_ROLE_LIST)
BONUS, ACCUMULATION, RECEIPTS = q(Measure.BONUS), q(Measure.ACCUMULATION), q(Measure.RECEIPT_COUNT)
K_SALE, K_EXPIRY, K_ACCRUAL = q(Kind.SALE), q(Kind.EXPIRY), q(Kind.ACCRUAL)
ONLINE, NIGHTLY, ACTIVE = q(Source.ONLINE), q(Source.NIGHTLY), q(CardStatus.ACTIVE)
D_WRITE_OFF, D_ACCRUAL = q(regulation.WRITE_OFF), q(regulation.ACCRUAL)
RUNNING, DONE = q(regulation.RUNNING), q(regulation.DONE)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# databases
# --------------------------------------------------------------------------------------------------
class Server:
    def __init__(self, admin_url: str):
        self.admin_url = make_url(admin_url)
        self.admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        self.created: list[str] = []

    def url(self, name: str) -> str:
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def version(self) -> int:
        with self.admin.connect() as conn:
            return int(conn.exec_driver_sql("SHOW server_version_num").scalar())

    def settings(self) -> dict:
        with self.admin.connect() as conn:
            return {name: conn.exec_driver_sql(f"SHOW {name}").scalar()
                    for name in ("server_version", "shared_buffers", "work_mem", "synchronous_commit",
                                 "max_wal_size", "autovacuum")}

    def create(self, name: str, template: str | None = None) -> str:
        sql = f'CREATE DATABASE "{name}"'
        if template:
            sql += f' TEMPLATE "{template}"'
            if self.version() >= 150000:
                sql += " STRATEGY = FILE_COPY"  # a file copy, not a WAL-logged block-by-block copy
        self.created.append(name)
        with self.admin.connect() as conn:
            conn.exec_driver_sql(sql)
        return self.url(name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            try:
                with self.admin.connect() as conn:
                    force = " WITH (FORCE)" if self.version() >= 130000 else ""
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"{force}')
                log(f"dropped database {name}")
            except Exception as exc:  # keep dropping the others
                log(f"could not drop database {name}: {exc}")
        self.created.clear()
        self.admin.dispose()


def checkpoint(server: Server) -> None:
    """Flush what earlier steps left dirty, so that a timed step does not pay for it."""
    with server.admin.connect() as conn:
        conn.exec_driver_sql("CHECKPOINT")


# --------------------------------------------------------------------------------------------------
# seeding (set-based; not a result)
# --------------------------------------------------------------------------------------------------
CARD = "'B' || lpad(({c})::text, 9, '0')"
# seven bonus lots in ten, two accumulation, one receipt count
MEASURE = ("(ARRAY[" + ",".join([BONUS] * 7 + [ACCUMULATION] * 2 + [RECEIPTS])
           + "])[(({k}) % 10 + 1)::int]")


def _lot_select(first: int, count: int, cards: int, kind: str) -> str:
    """INSERT INTO lots ... SELECT for ``count`` lots with ids first..first+count-1.

    Lot h (0-based within its kind) belongs to card h % cards + 1 and is that card's slot h / cards;
    a card's lots of one kind differ in their day (k = (card + 6 * slot) % 30 days from the cutoff),
    as the ledger makes one lot per card, measure and life. A receipt-count lot holds one receipt
    (100 hundredths); money lots hold 1.00 .. 1000.99.
    """
    h = f"(g - {first})"
    card_no = f"({h} % :cards + 1)"
    slot = f"({h} / :cards)"
    k = f"(({card_no} + 6 * {slot}) % 30)::int"
    measure = MEASURE.format(k=f"{card_no} + {slot}")
    amount = f"CASE WHEN {measure} = {RECEIPTS} THEN 100 ELSE 100 + (g * 7919) % 100000 END"
    if kind == "expiring":
        available, expires, posted = "NULL", f":cutoff - make_interval(days => {k})", "NULL"
    elif kind == "deferred":
        available = f":cutoff - make_interval(days => {k})"
        expires, posted = f":cutoff + make_interval(days => 365 - {k})", "NULL"
    else:  # background, not due: a quarter never ends, a quarter ends later, half are posted deferred lots
        available = (f"CASE WHEN {h} % 2 = 1 THEN :cutoff - make_interval(days => 31 + {k}) END")
        expires = (f"CASE WHEN {h} % 4 = 0 THEN NULL "
                   f"ELSE :cutoff + make_interval(days => 1 + ({h} % 300)::int) END")
        posted = f"CASE WHEN {h} % 2 = 1 THEN '{OLD_DOCUMENT}' END"
    return (
        "INSERT INTO lots (id, card_number, measure, remaining, available_from, expires_at, created_at, "
        "accrual_document_id) "
        f"SELECT g, {CARD.format(c=card_no)}, {measure}, {amount}, {available}, {expires}, :created, {posted} "
        f"FROM generate_series({first}::bigint, {first + count - 1}::bigint) AS g"
    )


def seed(url: str, cards: int, n_expiring: int, n_deferred: int, n_background: int, day: date,
         cutoff: datetime) -> None:
    engine = create_engine(url)
    created = cutoff - timedelta(days=400)
    params = {"cards": cards, "cutoff": cutoff, "created": created, "created_day": created.date()}
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '512MB'")
            # Secondary indexes and foreign keys are put back (same names, same definitions) after the
            # data is in: building them once is much faster than maintaining them row by row.
            fks = conn.execute(text(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE contype = 'f' AND conrelid::regclass::text = ANY(:t)"), {"t": list(TABLES)}).all()
            indexes = conn.execute(text(
                "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = current_schema() "
                "AND i.tablename = ANY(:t) AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
                "WHERE c.conname = i.indexname AND c.connamespace = current_schema()::regnamespace)"),
                {"t": list(TABLES)}).all()
            for table, name, _ in fks:
                conn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
            for name, _ in indexes:
                conn.exec_driver_sql(f'DROP INDEX "{name}"')

            conn.execute(text(
                "INSERT INTO cards (number, status, holder, phone, created_at, accumulation_delay_days, "
                "accumulation_lifetime_days, count_delay_days, count_lifetime_days) "
                f"SELECT {CARD.format(c='c')}, {ACTIVE}, 'Holder ' || c, NULL, :created, 0, 365, 0, 365 "
                "FROM generate_series(1, :cards) AS c"), params)
            first = 1
            for kind, count in (("expiring", n_expiring), ("deferred", n_deferred),
                                ("background", n_background)):
                if count:
                    conn.execute(text(_lot_select(first, count, cards, kind)), params)
                first += count
            conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('lots', 'id'), "
                                 "(SELECT coalesce(max(id), 0) + 1 FROM lots), false)")
            # one seed Sale per card made every lot of the card
            conn.execute(text(
                "INSERT INTO operations (id, card_number, kind, source, kkm, store, receipt_number, "
                "operation_time, business_date, content_hash, receipt_sum, bonus_accrued, bonus_spent, "
                "accumulation_delta, receipt_count_delta, promotion_code, original_operation_id, note, "
                "created_at, document_id) "
                f"SELECT md5('seed-sale/' || c.number)::uuid::text, c.number, {K_SALE}, {ONLINE}, 'KKM-1', "
                "'S-1', 'R-' || c.number, :created, :created_day, md5('seed-sale-hash/' || c.number), "
                "10 * coalesce(s.bonus, 0), coalesce(s.bonus, 0), 0, coalesce(s.accumulation, 0), "
                "coalesce(s.receipts, 0) / 100, NULL, NULL, NULL, :created, NULL "
                "FROM cards c LEFT JOIN ("
                f"  SELECT card_number, sum(remaining) FILTER (WHERE measure = {BONUS}) AS bonus, "
                f"         sum(remaining) FILTER (WHERE measure = {ACCUMULATION}) AS accumulation, "
                f"         sum(remaining) FILTER (WHERE measure = {RECEIPTS}) AS receipts "
                "  FROM lots GROUP BY card_number) s ON s.card_number = c.number"), params)
            conn.exec_driver_sql(
                "INSERT INTO entries (operation_id, lot_id, card_number, measure, role, amount) "
                "SELECT md5('seed-sale/' || card_number)::uuid::text, id, card_number, measure, "
                f"CASE WHEN available_from IS NULL THEN {CREDIT} ELSE {CREDIT_DEFERRED} END, remaining "
                "FROM lots ORDER BY id")

            for _, definition in indexes:
                conn.exec_driver_sql(definition)
            for table, name, definition in fks:
                conn.exec_driver_sql(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------------
# the bare SQL that does the same work
# --------------------------------------------------------------------------------------------------
LINE_COLUMNS = ("id, card_number, kind, source, kkm, store, receipt_number, operation_time, business_date, "
                "content_hash, receipt_sum, bonus_accrued, bonus_spent, accumulation_delta, "
                "receipt_count_delta, promotion_code, original_operation_id, note, created_at, document_id")
# the product's selection: every expired lot no WriteOff took yet is taken (and marked); what holds something burns
DUE_EXPIRY = "l.expiry_document_id IS NULL AND l.expires_at <= :cutoff"
BURN = DUE_EXPIRY + " AND l.remaining > 0"
DUE_ACCRUAL = "l.accrual_document_id IS NULL AND l.available_from IS NOT NULL AND l.available_from <= :cutoff"

BARE_SQL = [
    (None, "documents (2 rows)",
     "INSERT INTO documents (id, kind, business_date, status, lines, started_at) "
     f"VALUES (:wo, {D_WRITE_OFF}, :day, {RUNNING}, 0, :now), (:ac, {D_ACCRUAL}, :day, {RUNNING}, 0, :now)"),
    (regulation.WRITE_OFF, "write-off lines: INSERT operations SELECT DISTINCT card",
     f"INSERT INTO operations ({LINE_COLUMNS}) "
     f"SELECT u.id, u.card_number, {K_EXPIRY}, {NIGHTLY}, NULL, NULL, NULL, :cutoff, :day, u.id, "
     "0, 0, 0, 0, 0, NULL, NULL, NULL, :now, :wo "
     "FROM (SELECT gen_random_uuid()::text AS id, d.card_number "
     f"      FROM (SELECT DISTINCT l.card_number FROM lots l WHERE {BURN}) d) u"),
    (regulation.WRITE_OFF, "expiry entries: INSERT entries SELECT",
     "INSERT INTO entries (operation_id, lot_id, card_number, measure, role, amount) "
     f"SELECT o.id, l.id, l.card_number, l.measure, {EXPIRY}, -l.remaining "
     "FROM lots l JOIN operations o ON o.document_id = :wo AND o.card_number = l.card_number "
     f"WHERE {BURN}"),
    (regulation.WRITE_OFF, "UPDATE lots SET remaining = 0, expiry_document_id",
     f"UPDATE lots l SET remaining = least(l.remaining, 0), expiry_document_id = :wo WHERE {DUE_EXPIRY}"),
    # before the UPDATE below, so that it still finds the lots through ix_lots_due_accrual
    (regulation.ACCRUAL, "accrual lines: INSERT operations SELECT ... GROUP BY card",
     f"INSERT INTO operations ({LINE_COLUMNS}) "
     f"SELECT s.id, s.card_number, {K_ACCRUAL}, {NIGHTLY}, NULL, NULL, NULL, :cutoff, :day, s.id, "
     "0, s.bonus, 0, s.accumulation, floor(s.receipts / 100.0)::int, NULL, NULL, NULL, :now, :ac "
     "FROM (SELECT gen_random_uuid()::text AS id, g.* FROM ("
     "  SELECT l.card_number, "
     f"         coalesce(sum(e.amount) FILTER (WHERE l.measure = {BONUS}), 0) AS bonus, "
     f"         coalesce(sum(e.amount) FILTER (WHERE l.measure = {ACCUMULATION}), 0) AS accumulation, "
     f"         coalesce(sum(e.amount) FILTER (WHERE l.measure = {RECEIPTS}), 0) AS receipts "
     "  FROM lots l JOIN entries e ON e.lot_id = l.id "
     f"  AND e.role IN ({DEFERRED_ROLES}) "
     f"  WHERE {DUE_ACCRUAL} GROUP BY l.card_number) g "
     " WHERE g.bonus <> 0 OR g.accumulation <> 0 OR g.receipts <> 0) s"),
    (regulation.ACCRUAL, "UPDATE lots SET accrual_document_id",
     f"UPDATE lots l SET accrual_document_id = :ac WHERE {DUE_ACCRUAL}"),
    (None, "documents done (2 rows)",
     f"UPDATE documents d SET status = {DONE}, completed_at = :now, leased_by = NULL, lease_until = NULL, "
     "lines = (SELECT count(*) FROM operations o WHERE o.document_id = d.id) WHERE d.id IN (:wo, :ac)"),
]


def run_bare(url: str, day: date, cutoff: datetime) -> tuple[float, list[tuple[str | None, str, float, int]]]:
    engine = create_engine(url)
    with engine.begin() as conn:
        wo, ac = (regulation.document_id(conn, k, day) for k in (regulation.WRITE_OFF, regulation.ACCRUAL))
    params = {"wo": wo, "ac": ac,
              "day": day, "cutoff": cutoff, "now": datetime.now(timezone.utc).replace(tzinfo=None)}
    steps = []
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")  # connect outside the clock, as the product's pool does once
            conn.rollback()
            started = time.perf_counter()
            with conn.begin():
                for phase, name, sql in BARE_SQL:
                    t0 = time.perf_counter()
                    rows = conn.execute(text(sql), params).rowcount
                    steps.append((phase, name, time.perf_counter() - t0, rows))
                t0 = time.perf_counter()
            steps.append((None, "COMMIT", time.perf_counter() - t0, 0))
            return time.perf_counter() - started, steps
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------------
# the product
# --------------------------------------------------------------------------------------------------
class StatementProfile:
    """Opt-in (--profile): time spent in the driver per statement shape, for the first product run.

    Adds a few microseconds per statement, so the profiled run is a little slower than an
    unprofiled one; the table says where the time goes, not how much there is.
    """

    def __init__(self, engine):
        import collections
        import re

        self.stats = collections.defaultdict(lambda: [0, 0.0])
        self.kind = "-"
        self.enabled = True
        self._params = re.compile(r"%\(\w+\)s(?:, %\(\w+\)s)+")
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn, cursor, statement, parameters, context, executemany):
        context._bench_started = time.perf_counter()

    def _after(self, conn, cursor, statement, parameters, context, executemany):
        if not self.enabled:
            return
        shape = " ".join(self._params.sub("...", statement).split())
        entry = self.stats[(self.kind, shape[:110] + (" [executemany]" if executemany else ""))]
        entry[0] += 1
        entry[1] += time.perf_counter() - context._bench_started

    def report(self, wall: float) -> list[str]:
        in_driver = sum(v[1] for v in self.stats.values())
        lines = [f"product statements (--profile): {in_driver:.1f} s in the driver of {wall:.1f} s wall; "
                 f"the rest is Python (building statements and rows) and the network"]
        for (kind, shape), (calls, seconds) in sorted(self.stats.items(), key=lambda kv: -kv[1][1])[:15]:
            lines.append(f"  {seconds:9.2f} s {calls:9,} calls  [{kind}] {shape}")
        return lines


def run_product(url: str, day: date, batch: int, runs: int = 2, profile: bool = False):
    """Time ``runs`` runs of the product's regulation for ``day``; also the time of each document in
    the first run (from the first to the last progress report of that document)."""
    billing = create_billing(Settings(database_url=url, nightly_batch=batch))
    last = [time.monotonic()]
    phases: dict[str, list[float]] = {}
    profiler = StatementProfile(billing.engine) if profile else None

    def progress(kind, done, total):
        now = time.perf_counter()
        phases.setdefault(kind, [now, now])[1] = now
        if profiler:
            profiler.kind = kind
        if time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            log(f"  product: {kind} {done:,}/{total:,}")

    results = []
    try:
        with billing.engine.connect() as conn:  # open the pool's connection outside the clock
            conn.exec_driver_sql("SELECT 1")
        for run in range(runs):
            nightly = Nightly(billing, batch=batch, progress=progress if run == 0 else None)
            started = time.perf_counter()
            report = nightly.run_day(day)
            results.append((time.perf_counter() - started, report))
            if profiler:
                profiler.enabled = False
    finally:
        billing.engine.dispose()
    return results, {kind: end - start for kind, (start, end) in phases.items()}, profiler


# --------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------
CHECKS = {
    "due lots left to expire": f"SELECT count(*) FROM lots l WHERE {DUE_EXPIRY}",
    "due lots left to accrue": f"SELECT count(*) FROM lots l WHERE {DUE_ACCRUAL}",
    "expiry entries": f"SELECT count(*) FROM entries WHERE role = {EXPIRY}",
    "lots with an expiry entry": f"SELECT count(DISTINCT lot_id) FROM entries WHERE role = {EXPIRY}",
    "expiry entries on write-off lines":
        "SELECT count(*) FROM entries e JOIN operations o ON o.id = e.operation_id "
        f"WHERE e.role = {EXPIRY} AND o.document_id = :wo AND o.kind = {K_EXPIRY}",
    "sum burnt (hundredths)": f"SELECT coalesce(sum(amount), 0) FROM entries WHERE role = {EXPIRY}",
    "burnt per card and measure (hash)":
        "SELECT coalesce(sum(hashtextextended(card_number || '/' || measure || '/' || s, 0)::numeric), 0) "
        f"FROM (SELECT card_number, measure, sum(amount) AS s FROM entries WHERE role = {EXPIRY} "
        "GROUP BY 1, 2) x",
    "write-off lines": f"SELECT count(*) FROM operations WHERE document_id = :wo AND kind = {K_EXPIRY}",
    "accrual lines": f"SELECT count(*) FROM operations WHERE document_id = :ac AND kind = {K_ACCRUAL}",
    "accrued bonus (hundredths)": "SELECT coalesce(sum(bonus_accrued), 0) FROM operations WHERE document_id = :ac",
    "accrued accumulation (hundredths)":
        "SELECT coalesce(sum(accumulation_delta), 0) FROM operations WHERE document_id = :ac",
    "accrued receipts": "SELECT coalesce(sum(receipt_count_delta), 0) FROM operations WHERE document_id = :ac",
    "accrual lines per card (hash)":
        "SELECT coalesce(sum(hashtextextended(card_number || '/' || bonus_accrued || '/' || accumulation_delta "
        "|| '/' || receipt_count_delta, 0)::numeric), 0) FROM operations WHERE document_id = :ac",
    "lots posted by the accrual": "SELECT count(*) FROM lots WHERE accrual_document_id = :ac",
    "lots taken by the write-off": "SELECT count(*) FROM lots WHERE expiry_document_id = :wo",
    "lots (id, remaining, posted, taken) (hash)":
        "SELECT sum(hashtextextended(id || '/' || remaining || '/' || coalesce(accrual_document_id, '-') || '/' "
        "|| coalesce(expiry_document_id, '-'), 0)::numeric) FROM lots",
    "documents done": f"SELECT count(*) FROM documents WHERE id IN (:wo, :ac) AND status = {DONE}",
    "document lines": "SELECT coalesce(sum(lines), 0) FROM documents WHERE id IN (:wo, :ac)",
    "lots whose entries do not sum to remaining":
        "SELECT count(*) FROM lots l LEFT JOIN (SELECT lot_id, sum(amount) AS s FROM entries GROUP BY lot_id) e "
        "ON e.lot_id = l.id WHERE coalesce(e.s, 0) <> l.remaining",
}


def measure_state(url: str, day: date, cutoff: datetime) -> dict:
    engine = create_engine(url)
    with engine.begin() as conn:
        wo, ac = (regulation.document_id(conn, k, day) for k in (regulation.WRITE_OFF, regulation.ACCRUAL))
    params = {"wo": wo, "ac": ac, "cutoff": cutoff}
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET work_mem = '256MB'")
            return {name: conn.execute(text(sql), params).scalar() for name, sql in CHECKS.items()}
    finally:
        engine.dispose()


def due_before(url: str, cutoff: datetime) -> dict:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(text(
                f"SELECT count(*) FILTER (WHERE {BURN}), "
                f"coalesce(sum(remaining) FILTER (WHERE {BURN}), 0), "
                f"count(*) FILTER (WHERE {DUE_ACCRUAL}), count(*), "
                f"count(DISTINCT card_number) FILTER (WHERE {BURN}), "
                f"count(DISTINCT card_number) FILTER (WHERE {DUE_ACCRUAL}) FROM lots l"),
                {"cutoff": cutoff}).one()
            return dict(expiring=row[0], expiring_sum=row[1], deferred=row[2], lots=row[3],
                        expiring_cards=row[4], deferred_cards=row[5])
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lots", type=int, default=1_000_000, help="due lots: half expire, half are accrued")
    parser.add_argument("--batch", type=int, default=None,
                        help="the product's batch, lots per transaction (default: the product's own, "
                             "KKMTRANSFER_NIGHTLY_BATCH or its default, as production runs it)")
    parser.add_argument("--cards", type=int, default=None, help="cards (default: min(100000, lots / 10))")
    parser.add_argument("--background", type=int, default=None,
                        help="lots that are not due (default: as many as --lots)")
    parser.add_argument("--day", type=date.fromisoformat, default=None,
                        help="the business date (default: today in the configured time zone)")
    parser.add_argument("--keep", action="store_true", help="do not drop the databases at the end")
    parser.add_argument("--profile", action="store_true",
                        help="also print where the product's time goes, statement by statement (slows it a little)")
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = Settings.from_env().nightly_batch
    if args.lots < 2 or args.batch <= 0:
        parser.error("--lots must be at least 2 and --batch positive")
    cards = args.cards or max(1, min(100_000, args.lots // 10))
    background = args.lots if args.background is None else args.background
    n_expiring, n_deferred = args.lots // 2, args.lots - args.lots // 2
    settings = Settings(database_url="postgresql://", nightly_batch=args.batch)
    day = args.day or datetime.now(settings.tz).date()
    cutoff = day_start(day, settings.tz).replace(tzinfo=None)  # naive UTC, as stored

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # drop the databases on kill as well
    total_started = time.perf_counter()
    server = Server(os.environ.get("KKMTRANSFER_BENCH_PG_URL") or DEFAULT_ADMIN_URL)
    name = f"kkmbench_{uuid.uuid4().hex[:10]}"
    try:
        info = server.settings()
        url_product = server.create(f"{name}_p")
        log(f"database {name}_p: migrating")
        upgrade(url_product)
        log(f"seeding {cards:,} cards, {n_expiring:,} expiring + {n_deferred:,} deferred + "
            f"{background:,} background lots ...")
        t0 = time.perf_counter()
        seed(url_product, cards, n_expiring, n_deferred, background, day, cutoff)
        from kkmtransfer.adapters.server_ids import engine_namespace

        seeded_engine = create_engine(url_product)
        engine_namespace(seeded_engine)  # the id secret is copied too: both runs derive the same document ids
        seeded_engine.dispose()
        seeded = time.perf_counter() - t0
        t0 = time.perf_counter()
        url_bare = server.create(f"{name}_s", template=f"{name}_p")
        copied = time.perf_counter() - t0
        log(f"seeded in {seeded:.1f} s, copied in {copied:.1f} s (not results)")
        before = due_before(url_product, cutoff)
        assert before["expiring"] == n_expiring and before["deferred"] == n_deferred, before

        checkpoint(server)
        log(f"product: Nightly(batch={args.batch}).run_day({day}) ...")
        runs, phases, profiler = run_product(url_product, day, args.batch, profile=args.profile)
        (t_product, rep), (t_again, rep_again) = runs
        checkpoint(server)
        log("bare SQL: one transaction ...")
        t_bare, steps = run_bare(url_bare, day, cutoff)

        log("checking that both agree ...")
        state_p = measure_state(url_product, day, cutoff)
        state_s = measure_state(url_bare, day, cutoff)

        # ---- report ------------------------------------------------------------------------
        print()
        print(f"kkmtransfer nightly regulation on PostgreSQL {info['server_version']} "
              f"(shared_buffers {info['shared_buffers']}, work_mem {info['work_mem']}, "
              f"synchronous_commit {info['synchronous_commit']}, autovacuum {info['autovacuum']})")
        print(f"day {day} (cutoff {cutoff:%Y-%m-%d %H:%M} UTC); {cards:,} cards; {before['lots']:,} lots in "
              f"the ledger: {n_expiring:,} to expire ({before['expiring_cards']:,} cards), {n_deferred:,} to "
              f"accrue ({before['deferred_cards']:,} cards), {background:,} not due")
        print(f"product batch: {args.batch:,} lots per transaction")
        print()
        head = (f"{'run':<34}{'lots expired':>13}{'lots accrued':>13}{'lines WO/Acc':>16}"
                f"{'time, s':>10}{'vs bare':>9}{'lots/s':>11}{'batch':>8}")
        print(head)
        print("-" * len(head))

        def row(label, expired, accrued, lines, seconds, batch):
            done = expired + accrued
            rate = f"{done / seconds:,.0f}" if done and seconds > 0 else "-"
            print(f"{label:<34}{expired:>13,}{accrued:>13,}{lines:>16}{seconds:>10.3f}"
                  f"{seconds / t_bare:>8.2f}x{rate:>11}{batch:>8}")

        row("bare SQL (single statements, 1 tx)", state_s["expiry entries"], state_s["lots posted by the accrual"],
            f"{state_s['write-off lines']:,}/{state_s['accrual lines']:,}", t_bare, "-")
        row("product Nightly.run_day", rep.expired_lots, rep.accrued_lots,
            f"{rep.write_off_lines:,}/{rep.accrual_lines:,}", t_product, f"{args.batch:,}")
        row("product run_day again (nothing due)", rep_again.expired_lots, rep_again.accrued_lots,
            f"{rep_again.write_off_lines:,}/{rep_again.accrual_lines:,}", t_again, f"{args.batch:,}")
        print()
        print(f"ratio product / bare SQL: {t_product / t_bare:.2f}   "
              f"(second run of the same day: skipped={rep_again.skipped}, {t_again * 1000:.1f} ms)")
        print()
        print(f"{'per document':<34}{'product, s':>12}{'bare SQL, s':>13}{'product/bare':>14}")
        for kind, what in ((regulation.WRITE_OFF, "WriteOff (expiry)"), (regulation.ACCRUAL, "Accrual")):
            bare = sum(seconds for phase, _, seconds, _ in steps if phase == kind)
            mine = phases.get(kind, 0.0)
            print(f"{what:<34}{mine:>12.3f}{bare:>13.3f}{mine / bare if bare else 0:>13.2f}x")
        print()
        print("bare SQL, statement by statement:")
        for _, label, seconds, rows in steps:
            print(f"  {label:<58}{rows:>10,} rows {seconds:>9.3f} s")
        if profiler:
            print()
            print("\n".join(profiler.report(t_product)))

        # ---- agreement -----------------------------------------------------------------------
        print()
        expected = {
            "due lots left to expire": 0, "due lots left to accrue": 0,
            "expiry entries": n_expiring, "lots with an expiry entry": n_expiring,
            "expiry entries on write-off lines": n_expiring, "sum burnt (hundredths)": -before["expiring_sum"],
            "write-off lines": before["expiring_cards"], "accrual lines": before["deferred_cards"],
            "lots posted by the accrual": n_deferred, "lots taken by the write-off": n_expiring, "documents done": 2,
            "document lines": before["expiring_cards"] + before["deferred_cards"],
            "lots whose entries do not sum to remaining": 0,
        }
        problems = []
        print(f"{'check':<46}{'product':>24}{'bare SQL':>24}  ")
        for key in CHECKS:
            p, s = state_p[key], state_s[key]
            ok = p == s and (key not in expected or p == expected[key])
            if not ok:
                problems.append(key)
            verdict = "ok" if ok else "DIFFERS" + (f" (expected {expected[key]})" if key in expected else "")
            print(f"{key:<46}{p!s:>24}{s!s:>24}  {verdict}")
        product_report_ok = (rep.expired_lots == n_expiring and rep.accrued_lots == n_deferred
                             and rep_again.skipped and rep_again.expired_lots == 0 and rep_again.accrued_lots == 0)
        if not product_report_ok:
            problems.append("product DayReport")
            print(f"product reports: {rep} / again: {rep_again}  DIFFERS")
        print()
        print("RESULT: " + ("both agree" if not problems else "MISMATCH in " + ", ".join(problems)))
        print(f"total run time {time.perf_counter() - total_started:.1f} s "
              f"(seeding {seeded:.1f} s and copying {copied:.1f} s included)")
        return 0 if not problems else 1
    finally:
        if args.keep:
            log(f"kept databases: {', '.join(server.created)}")
        else:
            server.drop_all()


if __name__ == "__main__":
    sys.exit(main())
