"""The SQL schema (SQLAlchemy Core) and the engine, the same on SQLite and PostgreSQL.

Money and other measures are stored as whole hundredths in BIGINT columns (``Cents``) so that sums are
exact on both databases; times are stored as naive UTC (``UTCDateTime``) and come back aware.
"""
from __future__ import annotations

import select as _select
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

# An autoincrementing 64-bit key that SQLite also accepts as its rowid alias.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Cents(TypeDecorator):
    """A Decimal with two fraction digits, stored as a whole number of hundredths."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        scaled = Decimal(value).scaleb(2)
        if scaled != scaled.to_integral_value():
            raise ValueError(f"more than two fraction digits: {value}")
        return int(scaled)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return Decimal(int(value)).scaleb(-2).quantize(Decimal("0.01"))


class Thousandths(TypeDecorator):
    """A Decimal with three fraction digits (a quantity), stored as a whole number of thousandths."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        scaled = Decimal(value).scaleb(3)
        if scaled != scaled.to_integral_value():
            raise ValueError(f"more than three fraction digits: {value}")
        return int(scaled)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return Decimal(int(value)).scaleb(-3).quantize(Decimal("0.001"))


class UTCDateTime(TypeDecorator):
    """An aware datetime, stored as naive UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):  # SQLite aggregate results come back as text
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=timezone.utc)


users = Table(
    "users",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("password_hash", String(255), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("disabled", Boolean(), nullable=False, default=False),
    # optional binding: the KKM codes (comma-separated) and/or the store this user may post for
    Column("kkms", String(500)),
    Column("store", String(64)),
)

cards = Table(
    "cards",
    metadata,
    Column("number", String(32), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("holder", String(200)),
    Column("phone", String(10), index=True),
    Column("created_at", UTCDateTime(), nullable=False),
    # life rules of accumulation and receipt count (deferral and lifetime in days; NULL lifetime: never)
    Column("accumulation_delay_days", Integer(), nullable=False, server_default="0"),
    Column("accumulation_lifetime_days", Integer()),
    Column("count_delay_days", Integer(), nullable=False, server_default="0"),
    Column("count_lifetime_days", Integer()),
    # KKMTRANSFER_SPEND_CODE=per-card: this card needs an SMS code to spend bonuses online
    Column("spend_code_required", Boolean(), nullable=False, server_default=text("false")),
)

promotions = Table(
    "promotions",
    metadata,
    Column("code", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("valid_from", Date()),
    Column("valid_to", Date()),
    Column("delay_days", Integer(), nullable=False),
    Column("lifetime_days", Integer()),
    Column("until_date", Date()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("closed_at", UTCDateTime()),
    Column("accrual_percent", Cents()),  # the promotion's own accrual percent (receipts the server calculates)
)

# The nightly regulation's documents: one "WriteOff" ("Списание с дисконтных карт") and one "Accrual"
# ("Начисление на дисконтные карты") per business date; their lines are operations (document_id).
documents = Table(
    "documents",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("business_date", Date(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("lines", Integer(), nullable=False, server_default="0"),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("completed_at", UTCDateTime()),
    Column("leased_by", String(64)),       # the run working on it (claimed with a conditional UPDATE)
    Column("lease_until", UTCDateTime()),
    UniqueConstraint("kind", "business_date", name="uq_documents_kind_date"),
)

operations = Table(
    "operations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("card_number", String(32), ForeignKey("cards.number"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("source", String(16), nullable=False),
    Column("kkm", String(64)),
    Column("store", String(64)),
    Column("receipt_number", String(64)),
    Column("operation_time", UTCDateTime(), nullable=False),
    Column("business_date", Date(), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("receipt_sum", Cents(), nullable=False, default=0),
    Column("bonus_accrued", Cents(), nullable=False, default=0),
    Column("bonus_spent", Cents(), nullable=False, default=0),
    Column("accumulation_delta", Cents(), nullable=False, default=0),
    Column("receipt_count_delta", Integer(), nullable=False, default=0),
    Column("promotion_code", String(64)),
    Column("original_operation_id", String(36), index=True),
    Column("note", String(500)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("document_id", String(36), index=True),
    Column("actor", String(255)),                        # the HTTP user, the journal file, the OS user
    Index("ix_operations_card_time", "card_number", "operation_time"),
)

lots = Table(
    "lots",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("card_number", String(32), ForeignKey("cards.number"), nullable=False),
    Column("measure", String(16), nullable=False),
    Column("remaining", Cents(), nullable=False),
    Column("available_from", UTCDateTime()),
    Column("expires_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("accrual_document_id", String(36)),  # the nightly Accrual document that posted its start
    Column("expiry_document_id", String(36)),  # the nightly WriteOff document that took it once it expired
    Column("origin_operation_id", String(36)),  # the operation that made the lot
    # a bonus action's lot is its own: other credits never go into it, so cancelling takes back just it
    Column("exclusive", Boolean(), nullable=False, server_default=text("false")),
    Index("ix_lots_card_measure", "card_number", "measure"),
    # partial indexes: the nightly regulation reads only what is due, however large the ledger grows. The
    # expiry index is keyed on the WriteOff's mark, not on remaining: updating a lot's remaining touches no
    # indexed column, so it can be a HOT update (with the room fillfactor 70 leaves on the page)
    Index("ix_lots_due_expiry", "expires_at", "id",
          postgresql_where=text("expiry_document_id IS NULL AND expires_at IS NOT NULL"),
          sqlite_where=text("expiry_document_id IS NULL AND expires_at IS NOT NULL")),
    Index("ix_lots_due_accrual", "available_from", "card_number", "id",
          postgresql_where=text("accrual_document_id IS NULL AND available_from IS NOT NULL"),
          sqlite_where=text("accrual_document_id IS NULL AND available_from IS NOT NULL")),
    # the same lots by card: an accrual batch takes all the due lots of its cards, one index probe per card
    Index("ix_lots_due_accrual_card", "card_number", "available_from", "id",
          postgresql_where=text("accrual_document_id IS NULL AND available_from IS NOT NULL"),
          sqlite_where=text("accrual_document_id IS NULL AND available_from IS NOT NULL")),
    postgresql_with={"fillfactor": 70},
)

entries = Table(
    "entries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("operation_id", String(36), ForeignKey("operations.id"), nullable=False, index=True),
    Column("lot_id", BigInteger(), ForeignKey("lots.id"), nullable=False, index=True),
    Column("card_number", String(32), nullable=False),
    Column("measure", String(16), nullable=False),
    Column("role", String(16), nullable=False),
    Column("amount", Cents(), nullable=False),
)


# Offline journals: rows without an OperationId get one; the key of the register's transaction is kept
# with it, so the same row loaded again maps to the same operation.
journal_keys = Table(
    "journal_keys",
    metadata,
    Column("kkm", String(64), primary_key=True),
    Column("transaction_number", String(64), primary_key=True),
    Column("transaction_time", UTCDateTime(), primary_key=True),
    Column("operation_id", String(36), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

# Rows of journals that could not be applied: kept, listed and retried, never lost.
journal_rejects = Table(
    "journal_rejects",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("row_key", String(80), nullable=False, unique=True),
    Column("file_name", String(255), nullable=False),
    Column("line_no", Integer(), nullable=False),
    Column("raw_row", Text(), nullable=False),
    Column("fault_code", String(64), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("note", Text()),  # why a reject was dismissed by hand, and by whom
    Index("ix_journal_rejects_status", "status", "id"),
)

# Journal files taken from the inbox (dropped there or uploaded through the console): state, progress,
# what their rows came to. The rows that could not be applied are in journal_rejects (by file_name).
journal_files = Table(
    "journal_files",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False),         # the file's name in the inbox (= rejects' file_name)
    Column("state", String(16), nullable=False),         # queued / processing / done / failed
    Column("size", BigInteger()),
    Column("rows", Integer()),
    Column("processed", Integer(), nullable=False, server_default=text("0")),
    Column("applied", Integer()),
    Column("already", Integer()),
    Column("rejected", Integer()),
    Column("error", Text()),
    Column("uploaded_by", String(64)),                   # the operator; None: dropped into the inbox
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    Index("ix_journal_files_name", "name", "id"),
)

# Billing start ("включение биллинга"): one row once billing is enabled.
billing_state = Table(
    "billing_state",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column("start_date", Date(), nullable=False),
    Column("enabled_at", UTCDateTime(), nullable=False),
    Column("opening_file", String(255)),
    Column("cards", Integer(), nullable=False),
)


# Back-office actions ("Бонус-акция", "Обнуление бессрочных бонусов") and the cards each one covers.
actions = Table(
    "actions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(16), nullable=False),          # credit / zero
    Column("amount", Cents()),
    Column("until_date", Date()),
    Column("inactive_since", Date()),
    Column("selection", String(500), nullable=False),
    Column("note", String(500)),
    Column("status", String(16), nullable=False),        # running / done / cancelling / cancelled
    Column("cards", Integer(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("completed_at", UTCDateTime()),
    Column("cancelled_at", UTCDateTime()),
)

action_cards = Table(
    "action_cards",
    metadata,
    Column("action_id", String(36), ForeignKey("actions.id"), primary_key=True),
    Column("card_number", String(32), primary_key=True),
    Column("state", String(16), nullable=False),         # pending / done / skipped / cancelled
    Column("amount", Cents()),                           # what the action moved on this card
    Column("kept", Cents()),                             # on cancel: what could not be taken back
    # a card's progress (pending -> done, its amount) updates no indexed column: with room on the page for
    # the new version it is a HOT update (migration 0014)
    postgresql_with={"fillfactor": 45},
)


# The installation's secret: the namespace of every id the server derives for itself (adapters/server_ids.py),
# so no register can compute one and send it first. One row, made on first use; never exported.
server_secret = Table(
    "server_secret",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=False),
    Column("secret", String(64), nullable=False),
)

# SMS codes before spending bonuses: only the keyed hash of a code is kept (kkmtransfer.domain.spend_codes).
spend_codes = Table(
    "spend_codes",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("card_number", String(32), ForeignKey("cards.number"), nullable=False),
    Column("code_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),      # pending/active/used/locked/superseded/failed/uncertain
    Column("tries", Integer(), nullable=False, server_default="0"),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("kkm", String(64)),
    Column("requested_by", String(64)),                # the HTTP user of the register
    Column("message_id", String(64)),                  # the gateway's id of the SMS
    Column("used_operation_id", String(36)),
    Column("closed_at", UTCDateTime()),
    Index("ix_spend_codes_card", "card_number", "id"),
)

# Every request for a code and every check of one: who, which register, which card, what came of it.
spend_code_events = Table(
    "spend_code_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("action", String(16), nullable=False),      # request / check
    Column("outcome", String(32), nullable=False),
    Column("card_number", String(32), nullable=False),
    Column("code_id", BigInteger()),
    Column("who", String(64)),
    Column("kkm", String(64)),
    Column("operation_id", String(36)),
    Column("detail", String(500)),
    Index("ix_spend_code_events_at", "at"),
    Index("ix_spend_code_events_card", "card_number", "at"),
)


# Who changed what in the back office (and online, through operations.actor).
audit = Table(
    "audit",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False, index=True),
    Column("actor", String(255), nullable=False),
    Column("action", String(64), nullable=False),
    Column("object", String(255)),
    Column("details", Text()),                           # JSON
)


# The bonus program, versioned: each change is a whole new version in force from valid_from on; a receipt
# is calculated by the version in force at its OperationTime. ``body`` is the Program as JSON.
program_versions = Table(
    "program_versions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("valid_from", UTCDateTime(), nullable=False, index=True),
    Column("body", Text(), nullable=False),
    Column("note", String(500)),
    Column("created_at", UTCDateTime(), nullable=False),
)

# Holds (ReserveBonus): the register's OperationId; the bonuses are held by a ledger operation of kind
# Hold (hold_operation_id, a server-derived id: adapters/server_ids) whose entries take them from the card's lots
# and give them back on release. The confirming Sale has the register's OperationId.
holds = Table(
    "holds",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("hold_operation_id", String(36), ForeignKey("operations.id"), nullable=False),
    Column("card_number", String(32), ForeignKey("cards.number"), nullable=False),
    Column("kkm", String(64), nullable=False),
    Column("amount", Cents(), nullable=False),
    Column("spend_code", String(64)),
    Column("content_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),      # reserved / confirmed / cancelled / released
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("settled_at", UTCDateTime()),
    Column("settled_by", String(64)),                  # register / task / operator
    Index("ix_holds_status_expires", "status", "expires_at"),
)

# Lines of a receipt (a Sale's lines as reported, with what each was paid by bonus and earned), and of a
# Return with lines (line_number names the original's line; quantity, sum and amounts are what returned).
receipt_lines = Table(
    "receipt_lines",
    metadata,
    Column("operation_id", String(36), ForeignKey("operations.id"), primary_key=True),
    Column("line_number", Integer(), primary_key=True),
    Column("article", String(64), nullable=False),
    Column("group_name", String(64)),
    Column("quantity", Thousandths(), nullable=False),
    Column("price", Cents(), nullable=False),
    Column("sum", Cents(), nullable=False),
    Column("max_payment", Cents(), nullable=False),
    Column("bonus_spent", Cents(), nullable=False),
    Column("bonus_accrued", Cents(), nullable=False),
)


# Back-office operators of the web console (separate from the registers' users) and the login throttle,
# kept per name whether or not an operator of that name exists.
operators = Table(
    "operators",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("role", String(16), nullable=False),          # viewer / operator / admin
    Column("password_hash", String(255), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("disabled", Boolean(), nullable=False, server_default=text("false")),
    # raised by a password change or a disabling: a console session carries the epoch it was opened in
    # and is worth nothing once the operator's epoch has moved on
    Column("session_epoch", Integer(), nullable=False, server_default=text("0")),
)

login_throttle = Table(
    "login_throttle",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("failures", Integer(), nullable=False),
    Column("locked_until", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
)


# Gift certificates. Each one's money is on a ledger account of its own: a row of ``cards`` numbered
# ``cert:<number>`` with status "Certificate" (no card path uses it), holding lots of the measure
# "certificate" (see kkmtransfer/domain/certificates.py and docs/operations.md).
certificates = Table(
    "certificates",
    metadata,
    Column("number", String(27), primary_key=True),
    Column("account", String(32), ForeignKey("cards.number"), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),             # SingleUse / MultiUse
    Column("nominal", Cents(), nullable=False),
    Column("state", String(16), nullable=False),            # Issued / Active / Redeemed / Expired
    Column("blocked", Boolean(), nullable=False, server_default=text("false")),
    Column("block_reason", String(64)),
    Column("valid_days", Integer()),                        # validity counted from the sale
    Column("valid_until", Date()),                          # last valid day (fixed at issue or at sale)
    Column("expires_at", UTCDateTime()),                    # when its lot burns (set at sale)
    Column("pin_hash", String(255)),
    Column("pin_failures", Integer(), nullable=False, server_default="0"),
    Column("sale_operation_id", String(36)),                # the Sell in force
    Column("created_at", UTCDateTime(), nullable=False),
    Column("sold_at", UTCDateTime()),
    Index("ix_certificates_state", "state"),
)


def make_engine(url: str, *, pg_prepared: bool = True, **kwargs) -> Engine:
    """An engine for the URL; SQLite gets a busy timeout, WAL and BEGIN IMMEDIATE for writers.
    ``pg_prepared=False`` (KKMTRANSFER_PG_PREPARED=off): the online path's hot statements go to PostgreSQL
    as text instead of server-side prepared statements (``pg_raw._send_prepared``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        engine = create_engine(url, **kwargs)
        _sqlite_tuning(engine)
        return engine
    engine = create_engine(url, **kwargs)
    if not pg_prepared:
        engine.update_execution_options(kkm_pg_prepared=False)  # repository.PREPARED_OPTION
    if not kwargs.get("pool_pre_ping"):
        _liveness_check(engine)
    return engine


# A pooled connection idle longer than this is pinged (a round trip) before use; a younger one is only
# checked for a closed socket, which costs no round trip.
IDLE_PING_SECONDS = 30.0


def _socket_says_closed(dbapi_conn) -> bool:
    """True when the server has closed this idle connection or sent something on it. An idle PostgreSQL
    connection (no LISTEN here) receives nothing until it sends: a readable socket means the backend was
    terminated (``pg_terminate_backend``, a database restart, a crash: its FATAL message or the end of the
    stream is waiting). A poll of the socket, no round trip."""
    if getattr(dbapi_conn, "closed", 0):
        return True
    fd = dbapi_conn.fileno()
    poller = _select.poll()
    poller.register(fd, _select.POLLIN | _select.POLLPRI)
    return bool(poller.poll(0))


def _liveness_check(engine: Engine) -> None:
    """Instead of ``pool_pre_ping`` (BEGIN + SELECT 1, a round trip at every checkout): a connection whose
    socket shows the server closed it, or that failed a ping after ``IDLE_PING_SECONDS`` idle, is replaced
    by a fresh one at checkout (the pool's DisconnectionError protocol), before the caller sends anything.
    A connection that dies during a statement is still invalidated by SQLAlchemy's disconnect handling,
    with every older connection of the pool."""
    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn, record):
        if record is not None:
            record.info["kkm_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn, record, _proxy):
        idle_since = record.info.pop("kkm_idle_since", None)
        if idle_since is None:  # a fresh connection
            return
        try:
            dead = _socket_says_closed(dbapi_conn)
            if not dead and time.monotonic() - idle_since > IDLE_PING_SECONDS:
                dead = not engine.dialect.do_ping(dbapi_conn)
                dbapi_conn.rollback()
        except Exception as exc:  # noqa: BLE001 - whatever failed, the connection is not to be used
            raise sa_exc.DisconnectionError(f"pooled connection unusable: {exc}") from exc
        if dead:
            raise sa_exc.DisconnectionError("the database closed this pooled connection (restart or terminate)")


def _sqlite_tuning(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # A writer takes the write lock at BEGIN, so two writers never deadlock on a lock upgrade.
        mode = "IMMEDIATE" if conn.get_execution_options().get("kkm_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


# the planner's statistics are stale when the table has more than doubled (and is past 10 pages) since its last
# ANALYZE or VACUUM: pg_class.relpages is the size they saw, pg_relation_size the size now (known at once, where
# pg_stat's counts of changed rows reach the statistics a second or more late)
_STALE_STATS = text(
    "SELECT c.relname FROM pg_class c "
    "WHERE c.relnamespace = CAST(current_schema() AS regnamespace) AND c.relkind = 'r' "
    "AND c.relname = ANY(CAST(:names AS text[])) "
    "AND pg_relation_size(c.oid) > 2 * c.relpages * current_setting('block_size')::bigint "
    "AND pg_relation_size(c.oid) > 10 * current_setting('block_size')::bigint ORDER BY c.relname")


def analyze_if_stale(engine: Engine, tables: list[str]) -> list[str]:
    """PostgreSQL: ANALYZE those of ``tables`` whose planner statistics are stale (see ``_STALE_STATS``); the
    names analyzed. A bulk load that grows a table from nothing (a new installation's first journals, or a
    server with autovacuum off or not yet come round) otherwise plans its reads on a table it believes empty
    or small: a batch's lots read by a sequential scan, ten times slower at 300,000 lots. A table another
    session is analyzing is skipped (SKIP_LOCKED). SQLite: nothing."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.begin() as conn:
        stale = list(conn.execute(_STALE_STATS, {"names": tables}).scalars())
        if stale:
            quote = conn.dialect.identifier_preparer.quote
            conn.execute(text(f"ANALYZE (SKIP_LOCKED) {', '.join(quote(name) for name in stale)}"))
    return stale


def database_unavailable(exc: BaseException) -> str | None:
    """One line that says the database could not serve (down, unreachable, too slow: a connection refused or
    lost, the pool's or the statement's timeout), or None for any other error. An operator needs that line,
    not a traceback: the cause is outside the program."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.TimeoutError, sa_exc.DisconnectionError)):
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return (detail[0] if detail else type(exc).__name__)[:300]
    return None


def is_postgresql(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def pg_text_array(items: list[str]) -> str:
    """A PostgreSQL text[] literal, each element quoted, to be sent as one text value and cast in the statement
    (``CAST(:cards AS text[])``): psycopg2 adapts a list element by element, and a constant array of thousands
    of elements is walked by the planner at every batch (the bulk paths: the nightly's cards and line ids, an
    action's cards and operation ids)."""
    if not items:
        return "{}"
    plain = "".join(items)
    if '"' in plain or "\\" in plain:  # quote each element's own quotes and backslashes
        items = [i.replace("\\", "\\\\").replace('"', '\\"') for i in items]
    return '{"' + '","'.join(items) + '"}'
