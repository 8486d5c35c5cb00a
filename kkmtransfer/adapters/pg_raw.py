"""The online path's hot statements on the DBAPI cursor (PostgreSQL through psycopg2): prebuilt reads and
writes (``_Read``, ``_Write``) sent as server-side prepared statements (``_send_prepared``), and GetCardInfo's
read without a unit of work (``card_summary``). With statement listeners, or on SQLite, the same statements
go through SQLAlchemy (``_raw_path``). docs/performance.md §5.2, §5.3, §5.6."""
from __future__ import annotations

import re
import weakref
from datetime import timezone

from sqlalchemy import bindparam, column, text
from sqlalchemy.engine import Connection, Engine

from ..domain.certificates import ACCOUNT_STATUS as CERTIFICATE_ACCOUNT
from ..domain.model import Lot, Measure
from .db import cards, holds, lots, operations


def _raw_path(conn: Connection) -> bool:
    """The hot statements go to the DBAPI cursor (``_Read``, ``_Write``): PostgreSQL through psycopg2, and
    nobody listening to statements (an APM tool, a test counting them: they see SQLAlchemy's path)."""
    return conn.dialect.driver == "psycopg2" and not _listening(conn) and not _listening(conn.engine)


_STATEMENT_EVENTS = ("before_execute", "after_execute", "before_cursor_execute", "after_cursor_execute")


def _listening(target) -> bool:
    """Whether statement listeners are registered now (``_has_events`` stays set once any listener was ever
    added, even after ``event.remove``)."""
    if not target._has_events:
        return False
    return any(getattr(target.dispatch, name) for name in _STATEMENT_EVENTS)


def _on_cursor(conn: Connection, sql: str, params: dict | None, fetch: bool, prepared: "_Prepared | None" = None,
               prefix: str = "", suffix: str = ""):
    """Run SQL compiled for ``conn``'s dialect on its DBAPI connection (the unit of work's transaction); a
    DBAPI error goes through SQLAlchemy's own handling, as ``Connection.execute`` would send it (wrapped as
    sqlalchemy.exc errors, IntegrityError included; a lost connection invalidated with the pool's older
    ones). With ``prepared`` (and KKMTRANSFER_PG_PREPARED on) it is sent as EXECUTE of the connection's
    server-side prepared statement (``_send_prepared``). ``prefix`` and ``suffix``: statements sent in the
    same round trip before and after it (``pg_folded``: the transaction's BEGIN, its COMMIT)."""
    cursor = None
    try:
        fairy = conn.connection
        dbapi = fairy.dbapi_connection
        cursor = dbapi.cursor()
        if prepared is not None and conn.get_execution_options().get(PREPARED_OPTION, True):
            sql = _send_prepared(conn, fairy, dbapi, cursor, prepared, sql, params, fetch, prefix, suffix)
        else:
            sql = prefix + sql + suffix
            cursor.execute(sql, params)
        fetched = cursor.fetchall() if fetch else None
        cursor.close()
        return fetched
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's handling
        conn._handle_dbapi_exception(exc, sql, params, cursor, None)


# -- server-side prepared statements (PostgreSQL, the raw path) ------------------------------------------
# Sent as text, each hot statement is parsed and planned by PostgreSQL on every call (GetCardInfo's read:
# about 0.17 of its 0.28 ms of database CPU). Each pooled DBAPI connection PREPAREs all of them once, the
# first time one is used on it, then sends ``EXECUTE kkm_<name>(...)`` with the parameters interpolated by
# psycopg2 as before; the PREPARE declares the parameters' types, so the values cast as the text did.
PREPARED_OPTION = "kkm_pg_prepared"  # an engine execution option: False sends text (KKMTRANSFER_PG_PREPARED)
_PREPARED: list["_Prepared"] = []  # every statement prepared on a connection, all in one go
_PREPARE_ALL: dict = {}  # dialect -> "DEALLOCATE ALL; PREPARE ...; ...; "
_STATE_KEY = "kkm_prepared"  # in the pool's connection info (cleared when the connection is replaced)
_IDLE = 0  # psycopg2.extensions.TRANSACTION_STATUS_IDLE: no transaction open on the server
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


class _PrepState:
    """What one DBAPI connection has prepared: ``ready`` once the PREPAREs were sent on it; ``tx`` the
    SQLAlchemy transaction in which an EXECUTE last succeeded (so the session still has them)."""
    __slots__ = ("dbapi", "ready", "tx")

    def __init__(self, dbapi):
        self.dbapi, self.ready, self.tx = dbapi, False, None


class _Prepared:
    """The prepared form of a raw-path statement: one or more statements (the lock and the read are two)
    named ``kkm_<name>``, ``kkm_<name>_2``..., their PREPARE text and the EXECUTE text that replaces the
    statement (psycopg2 interpolates the EXECUTE's arguments, as it did the text's). ``types``: the SQL
    type of each parameter. ``generic``: run it with the generic plan (``SET LOCAL plan_cache_mode``):
    PostgreSQL's choice would replan it on every call (a sale's write: its arrays' sizes make the generic
    plan's estimate look dearer than the custom one, for the same plan)."""

    def __init__(self, name: str, types: dict[str, str], generic: bool = False):
        self.name, self.types, self.generic = name, types, generic
        self._forms: dict = {}  # dialect -> (PREPARE statements, EXECUTE text)
        _PREPARED.append(self)

    def forms(self, dialect, sql: str) -> tuple[str, str]:
        try:
            return self._forms[dialect]
        except KeyError:
            pass
        prepares, executes = [], []
        for i, part in enumerate(sql.split("; ")):  # the hot statements hold no "; " in a literal
            name = f"kkm_{self.name}" + (f"_{i + 1}" if i else "")
            order: list[str] = []

            def number(m, order=order):
                if m.group(1) not in order:
                    order.append(m.group(1))
                return f"${order.index(m.group(1)) + 1}"
            body = _PLACEHOLDER.sub(number, part)
            prepares.append(f"PREPARE {name} ({', '.join(self.types[n] for n in order)}) AS {body}")
            executes.append(f"EXECUTE {name} ({', '.join(f'%({n})s' for n in order)})")
        execute = "; ".join(executes)
        if self.generic:
            execute = "SET LOCAL plan_cache_mode = force_generic_plan; " + execute
        self._forms[dialect] = "; ".join(prepares), execute
        return self._forms[dialect]


def _prepare_all(dialect) -> str:
    """Every hot statement's PREPARE, after DEALLOCATE ALL (so that it cannot fail on a name the session has
    already, whatever happened to it: the pool's connections run no other prepared statements)."""
    try:
        return _PREPARE_ALL[dialect]
    except KeyError:
        pass
    parts = ["DEALLOCATE ALL"] + [p.forms(dialect, p.owner.sql_for(dialect))[0] for p in _PREPARED]
    _PREPARE_ALL[dialect] = "; ".join(parts) + "; "
    return _PREPARE_ALL[dialect]


def _send_prepared(conn: Connection | Engine, fairy, dbapi, cursor, prepared: _Prepared, sql: str, params: dict,
                   fetch: bool, prefix: str = "", suffix: str = "") -> str:
    """Execute ``prepared`` on ``cursor``; answers the SQL sent (for an error's message). ``conn``: the unit
    of work's Connection, or the Engine when the read runs on a bare pooled connection in autocommit
    (``card_summary``).

    The first use on a DBAPI connection sends every PREPARE with the EXECUTE (one round trip). Later ones send
    the EXECUTE alone when the session is known to have the statements: the statement starts a transaction
    (or runs in autocommit), or an EXECUTE succeeded earlier in this transaction. If a pooler reset the
    session (``DISCARD ALL``: "prepared statement does not exist"), a statement that started the transaction
    lost nothing: the transaction is rolled back and the statement sent again with the PREPAREs. In the
    middle of a transaction that no EXECUTE has vouched for (a reserve begins with SQLAlchemy's statements),
    an error would lose the transaction: a write is sent inside a savepoint released in the same round trip
    (after a reset: rolled back to it, and sent again with the PREPAREs), a read as text (a savepoint could
    not be released behind its rows). ``prefix``/``suffix`` (``_on_cursor``) travel with whatever is sent; a
    prefix that begins the transaction (``"BEGIN; "``) makes the statement one that starts it."""
    state = fairy.info.get(_STATE_KEY)
    if state is None or state.dbapi is not dbapi:  # a new connection (or one that replaced it)
        state = fairy.info[_STATE_KEY] = _PrepState(dbapi)
    dialect = conn.dialect
    prepare, execute = prepared.forms(dialect, sql)
    tx = conn.get_transaction() if isinstance(conn, Connection) else None  # the Engine: card_summary, autocommit
    guarded = False
    if state.ready:
        # libpq's status of the server's transaction (psycopg2 in autocommit may be inside a BEGIN we sent)
        starts = dbapi.get_transaction_status() == _IDLE
        if not starts and (state.tx is None or tx is None or state.tx() is not tx):
            if fetch:
                sql = prefix + sql + suffix
                cursor.execute(sql, params)  # not vouched for in this transaction: as text
                return sql
            guarded = True
        sent = f"SAVEPOINT kkm_prepared; {execute}; RELEASE SAVEPOINT kkm_prepared" if guarded else execute
        sent = prefix + sent + suffix
        try:
            cursor.execute(sent, params)
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "pgcode", None) != "26000":  # invalid_sql_statement_name
                raise
            state.ready = False  # the session lost them (DISCARD ALL, DEALLOCATE): prepare again
            if guarded:
                cursor.execute("ROLLBACK TO SAVEPOINT kkm_prepared")
            elif not starts:  # vouched for, yet gone: a pooler that changes sessions within a transaction
                raise
            elif not dbapi.autocommit:
                dbapi.rollback()  # the failed EXECUTE was the transaction's first statement
            elif dbapi.get_transaction_status() != _IDLE:
                cursor.execute("ROLLBACK")  # the prefix's BEGIN opened it (pg_folded)
        else:
            state.tx = weakref.ref(tx) if tx is not None else None
            return sent
    # the prefix (a BEGIN) after the PREPAREs: PostgreSQL counts them into the transaction it begins
    sent = (_prepare_all(dialect) + prefix + execute + ("; RELEASE SAVEPOINT kkm_prepared" if guarded else "")
            + suffix)
    state.ready, state.tx = True, None
    try:
        cursor.execute(sent, params)
    except Exception:
        state.ready = False  # whether the PREPAREs went through is unknown: send them again next time
        raise
    state.tx = weakref.ref(tx) if tx is not None else None
    return sent


class _Write:
    """A prebuilt write of the sale's path on the DBAPI cursor (see ``_raw_path``): the SQL compiled once
    per dialect, the typed parameters bound by their types' bind processors (Cents, UTC times); sent as
    the connection's prepared statement ``kkm_<name>`` (``_Prepared``). ``types``: the SQL types of the
    untyped parameters (the typed ones' come from their types)."""

    def __init__(self, clause, name: str, types: dict[str, str] | None = None, generic: bool = False):
        self.clause = clause
        self._compiled: dict = {}  # dialect -> (SQL, [(name, processor)])
        types = dict(types or {})
        for bp_name, bp in clause._bindparams.items():
            if bp_name not in types:
                types[bp_name] = _param_type(bp.type)
        self.prepared = _Prepared(name, types, generic)
        self.prepared.owner = self

    def sql_for(self, dialect) -> str:
        return self._compile(dialect)[0]

    def _compile(self, dialect):
        try:
            return self._compiled[dialect]
        except KeyError:
            sql = str(self.clause.compile(dialect=dialect))
            processors = [(name, p) for name, bp in self.clause._bindparams.items()
                          if (p := bp.type.dialect_impl(dialect).bind_processor(dialect)) is not None]
            self._compiled[dialect] = sql, processors
            return sql, processors

    def execute(self, conn: Connection, params: dict, suffix: str = "") -> None:
        """``suffix``: statements sent after it in the same round trip (``pg_folded``: the COMMIT)."""
        if not _raw_path(conn):
            conn.execute(self.clause, params)
            if suffix:
                conn.exec_driver_sql(suffix.lstrip("; "))
            return
        sql, processors = self._compile(conn.dialect)
        if processors:
            params = dict(params)
            for name, p in processors:
                params[name] = p(params[name])
        _on_cursor(conn, sql, params, fetch=False, prepared=self.prepared, suffix=suffix)


def _param_type(type_) -> str:
    """A prepared statement's parameter type for a column's SQLAlchemy type: strings as text (a
    varchar(n) parameter would cut a longer value where the text path refused or missed it), the rest
    as the column's own type (Cents: bigint; UTC times: timestamp)."""
    from sqlalchemy.dialects import postgresql

    compiled = type_.compile(dialect=postgresql.dialect())
    return "text" if compiled.startswith(("VARCHAR", "CHAR", "TEXT")) else compiled


class _Read:
    """A prebuilt read of the hot paths (GetCardInfo, a sale's lock and read): its rows as tuples of typed
    values (Cents, aware UTC times), in the column order of ``_card_read``.

    On PostgreSQL it runs on the DBAPI cursor of the unit of work's connection (same transaction, same
    autocommit switch): the SQL compiled once per dialect, each column's result processor applied to the
    fetched tuples. That skips SQLAlchemy's per-call execution context and result objects (about 0.15 ms of
    CPU a call, half of GetCardInfo's database work in the process); a DBAPI error goes through SQLAlchemy's
    own handling (wrapped as sqlalchemy.exc errors; a lost connection invalidated with the pool's older
    ones, as any statement's). When the engine has statement listeners (an APM tool, a test counting
    statements) the read goes through ``Connection.execute`` so that they see it."""

    def __init__(self, sql: str, cols: list[tuple[str, str, object]], n_card: int, op_at: int | None,
                 hold_at: int | None, name: str | None = None):
        self.clause = text(sql).columns(*[column(label, type_) for _, label, type_ in cols])
        self.prepared = None
        if name is not None:  # sent as the connection's prepared statement kkm_<name>
            self.prepared = _Prepared(name, {"number": "text", "operation_id": "text"})
            self.prepared.owner = self
        self.types = [type_ for _, _, type_ in cols]
        self.n_card, self.op_at, self.hold_at = n_card, op_at, hold_at
        self.card_names = [c.name for c in cards.c]
        self.op_names = [c.name for c in operations.c]
        self.hold_names = [c.name for c in holds.c]
        self._compiled: dict = {}  # dialect -> (SQL, [(index, processor)], the same for the lot's columns)

    def _compile(self, dialect):
        try:
            return self._compiled[dialect]
        except KeyError:
            sql = str(self.clause.compile(dialect=dialect))
            processors = [(i, p) for i, p in enumerate(t.dialect_impl(dialect).result_processor(dialect, None)
                                                       for t in self.types) if p is not None]
            lot_processors = [(i, p) for i, p in processors if self.n_card <= i < self.n_card + 6]
            self._compiled[dialect] = sql, processors, lot_processors
            return self._compiled[dialect]

    def sql_for(self, dialect) -> str:
        return self._compile(dialect)[0]

    def rows(self, conn: Connection, params: dict, prefix: str = "") -> list:
        """``prefix``: statements sent before it in the same round trip (``pg_folded``: the BEGIN)."""
        if not _raw_path(conn):
            if prefix:
                conn.exec_driver_sql(prefix.rstrip("; "))
            return conn.execute(self.clause, params).all()
        sql, processors, lot_processors = self._compile(conn.dialect)
        fetched = _on_cursor(conn, sql, params, fetch=True, prepared=self.prepared, prefix=prefix)
        if not fetched or not processors:
            return fetched
        # every column of the first row; of the others only the lot's (the card, operation and hold
        # columns repeat the first row's and are read from it alone)
        first = list(fetched[0])
        for i, p in processors:
            first[i] = p(first[i])
        out = [first]
        for row in fetched[1:]:
            row = list(row)
            for i, p in lot_processors:
                row[i] = p(row[i])
            out.append(row)
        return out


def _card_read(with_operation: bool, lock_first: bool = False, name: str | None = None) -> _Read:
    """The card, its lots that matter now (as ``Repository._lots_of``) and, optionally, the operation
    named by :operation_id, as one SELECT: a card row per lot (one row with NULL lot columns when it has
    none). Written as text so that PostgreSQL can be sent the card's lock in front of it in one round trip;
    typed columns give the same values as the Core queries (Cents, aware UTC times)."""
    cols = [(f"c.{c.name}", f"c_{c.name}", c.type) for c in cards.c]
    n_card = len(cols)
    cols += [(f"l.{name}", f"l_{name}", lots.c[name].type)
             for name in ("id", "measure", "remaining", "available_from", "expires_at", "exclusive")]
    joins = ("FROM cards c LEFT OUTER JOIN lots l ON l.card_number = c.number "
             "AND (l.remaining <> 0 OR (l.available_from IS NULL AND l.expires_at IS NULL))")
    op_at = hold_at = None
    if with_operation:  # and the hold of that id (a Sale with a hold's OperationId confirms it)
        op_at = len(cols)
        cols += [(f"o.{c.name}", f"o_{c.name}", c.type) for c in operations.c]
        hold_at = len(cols)
        cols += [(f"h.{c.name}", f"h_{c.name}", c.type) for c in holds.c]
        joins += (" LEFT OUTER JOIN operations o ON o.id = :operation_id"
                  " LEFT OUTER JOIN holds h ON h.id = :operation_id")
    sql = (f"SELECT {', '.join(f'{expr} AS {label}' for expr, label, _ in cols)} {joins} "
           "WHERE c.number = :number ORDER BY l.id")
    if lock_first:  # PostgreSQL only: two statements, the rows are the second one's
        sql = "SELECT 1 FROM cards WHERE number = :number FOR UPDATE; " + sql
    return _Read(sql, cols, n_card, op_at, hold_at, name)


_CARD_WITH_LOTS = _card_read(with_operation=False, name="card")
_CARD_WITH_LOTS_AND_OPERATION = _card_read(with_operation=True)  # SQLite's (the writer holds the database)
_LOCK_AND_READ = _card_read(with_operation=True, lock_first=True, name="lock")  # kkm_lock, then kkm_lock_2


class _SummaryRead:
    """GetCardInfo's read on the raw path (``card_summary``): only what the answer needs, the card's status
    and holder and its lots that matter now (the same condition and order as ``_card_read``), 8 columns
    instead of 17 (psycopg2 decodes every column's name on every execute); the lot's remaining comes as
    numeric with two fraction digits (``remaining * 0.01``: the same Decimal as ``Cents``, made by
    psycopg2's C typecaster). A gift certificate's account is no card: not read."""

    sql = ("SELECT c.status, c.holder, l.id, l.measure, l.remaining * 0.01, l.available_from, l.expires_at, "
           "l.exclusive FROM cards c LEFT OUTER JOIN lots l ON l.card_number = c.number "
           "AND (l.remaining <> 0 OR (l.available_from IS NULL AND l.expires_at IS NULL)) "
           f"WHERE c.number = %(number)s AND c.status <> '{CERTIFICATE_ACCOUNT}' ORDER BY l.id")

    def __init__(self):
        self.prepared = _Prepared("info", {"number": "text"})
        self.prepared.owner = self

    def sql_for(self, dialect) -> str:
        return self.sql


_SUMMARY = _SummaryRead()
_MEASURE_OF = {m.value: m for m in Measure}
_UTC = timezone.utc


def raw_summary_path(engine: Engine) -> bool:
    """Whether ``card_summary`` serves GetCardInfo: PostgreSQL through psycopg2 with nobody listening to
    statements on the engine or on every Connection (they see the unit of work's path, as every raw-path
    statement's; a listener on the Connection class keeps its flag once added, so it keeps that path)."""
    return engine.dialect.driver == "psycopg2" and not _listening(engine) and not _listening(Connection)


def card_summary(engine: Engine, number: str) -> tuple[str, str | None, list[Lot]] | None:
    """GetCardInfo's read without a unit of work: (status, holder, the lots that matter now) of the card,
    None when there is none. One statement (one snapshot, one round trip) on a pooled DBAPI connection in
    autocommit (no BEGIN, no ROLLBACK, as ``UnitOfWork(single_statement=True)``), sent as the connection's
    prepared statement ``kkm_info`` (``_send_prepared``: a session reset by a pooler is prepared again).
    What it skips is the unit of work's Python: SQLAlchemy's Connection and transaction objects around one
    statement (the pool's checkout with its liveness check, and its reset on return, are the same). A
    DBAPI error goes through SQLAlchemy's handling, as on the unit of work's connection (wrapped as
    sqlalchemy.exc errors; a lost connection invalidated with the pool's older ones). PostgreSQL only
    (``raw_summary_path``)."""
    try:
        fairy = engine.raw_connection()
    except engine.dialect.loaded_dbapi.Error as exc:  # as engine.connect() raises it
        Connection._handle_dbapi_exception_noconnection(exc, engine.dialect, engine)
        raise
    params = {"number": number}
    sql = _SUMMARY.sql
    cursor = None
    dbapi = fairy.dbapi_connection
    try:
        dbapi.autocommit = True  # psycopg2's client-side switch, restored before the connection goes back
        try:
            cursor = dbapi.cursor()
            if engine.get_execution_options().get(PREPARED_OPTION, True):
                sql = _send_prepared(engine, fairy, dbapi, cursor, _SUMMARY.prepared, sql, params, True)
            else:
                cursor.execute(sql, params)
            rows = cursor.fetchall()
            cursor.close()
        finally:
            if not dbapi.closed:
                dbapi.autocommit = False
    except BaseException as exc:
        conn = Connection(engine, fairy)  # SQLAlchemy's own handling, as _on_cursor's
        try:
            conn._handle_dbapi_exception(exc, sql, params, cursor, None)
        finally:
            if not conn.invalidated and (dbapi.closed or dbapi.autocommit):
                conn.invalidate()  # never hand the pool a closed or an autocommit connection
            conn.close()
    fairy.close()
    if not rows:
        return None
    status, holder = rows[0][0], rows[0][1]
    if rows[0][2] is None:  # no lot (the outer join's one row)
        return status, holder, []
    measure_of, utc = _MEASURE_OF, _UTC
    return status, holder, [
        Lot(lot_id, measure_of.get(measure) or Measure(measure), remaining,
            None if start is None else start.replace(tzinfo=utc), None if end is None else end.replace(tzinfo=utc),
            exclusive)
        for _, _, lot_id, measure, remaining, start, end, exclusive in rows]

# PostgreSQL: an operation's entries and the relative updates of its lots' remaining (whole hundredths)
_ARRAY_TYPES = {"lot_ids": "bigint[]", "measures": "text[]", "roles": "text[]", "amounts": "bigint[]",
                "changed_ids": "bigint[]", "deltas": "bigint[]"}
_ENTRIES_AND_LOTS = _Write(text(
    "WITH new_entries AS (INSERT INTO entries (operation_id, lot_id, card_number, measure, role, amount) "
    "SELECT :operation_id, e.lot_id, :card_number, e.measure, e.role, e.amount "
    "FROM unnest(CAST(:lot_ids AS bigint[]), CAST(:measures AS text[]), CAST(:roles AS text[]), "
    "CAST(:amounts AS bigint[])) AS e (lot_id, measure, role, amount)) "
    "UPDATE lots SET remaining = lots.remaining + d.delta "
    "FROM unnest(CAST(:changed_ids AS bigint[]), CAST(:deltas AS bigint[])) AS d (lot_id, delta) "
    "WHERE lots.id = d.lot_id"), "moves", {"operation_id": "text", "card_number": "text", **_ARRAY_TYPES},
    generic=True)

# PostgreSQL: a new operation (every column an online sale sets), its entries and the relative updates of
# its lots' remaining in one statement; typed binds as the Core INSERT would send them
_OPERATION_COLUMNS = ("id", "card_number", "kind", "source", "kkm", "store", "receipt_number", "operation_time",
                      "business_date", "content_hash", "receipt_sum", "bonus_accrued", "bonus_spent",
                      "accumulation_delta", "receipt_count_delta", "promotion_code", "original_operation_id",
                      "created_at", "actor")
_OPERATION_COLUMNS_SET = frozenset(_OPERATION_COLUMNS)
_OPERATION_ENTRIES_AND_LOTS = _Write(text(
    f"WITH new_operation AS (INSERT INTO operations ({', '.join(_OPERATION_COLUMNS)}) "
    f"VALUES ({', '.join(':op_' + c for c in _OPERATION_COLUMNS)})), "
    "new_entries AS (INSERT INTO entries (operation_id, lot_id, card_number, measure, role, amount) "
    "SELECT :op_id, e.lot_id, :op_card_number, e.measure, e.role, e.amount "
    "FROM unnest(CAST(:lot_ids AS bigint[]), CAST(:measures AS text[]), CAST(:roles AS text[]), "
    "CAST(:amounts AS bigint[])) AS e (lot_id, measure, role, amount)) "
    "UPDATE lots SET remaining = lots.remaining + d.delta "
    "FROM unnest(CAST(:changed_ids AS bigint[]), CAST(:deltas AS bigint[])) AS d (lot_id, delta) "
    "WHERE lots.id = d.lot_id").bindparams(
    *[bindparam(f"op_{c}", type_=operations.c[c].type) for c in _OPERATION_COLUMNS]), "sale", _ARRAY_TYPES,
    generic=True)
