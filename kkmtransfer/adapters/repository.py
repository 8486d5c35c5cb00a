"""SQL access for the ledger: every query the service layer needs, on one open connection."""
from __future__ import annotations

import re
import weakref
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Iterable

from sqlalchemy import BigInteger, and_, bindparam, case, column, func, insert, or_, select, text, type_coerce, update
from sqlalchemy.engine import Connection, Engine

from ..domain.ledger import Move
from ..domain.model import DEFERRED_ROLES, ZERO, Kind, Lot, Measure, OperationView, Role
from ..domain.rules import CardRules, LifeRule, Promotion
from .db import UTCDateTime, cards, entries, holds, lots, operations, promotions, users

# a gift certificate's account row in cards (kkmtransfer/domain/certificates.py): no card path sees it
from ..domain.certificates import ACCOUNT_STATUS as CERTIFICATE_ACCOUNT  # noqa: E402


_CARD_RULES: dict[tuple, CardRules] = {}  # (the card's four rule columns) -> its rules


class Repository:
    def __init__(self, conn: Connection):
        self._conn = conn
        self.conn = conn  # pg_folded.FoldingRepository: a property that first sends what is pending
        self._holds_read: dict[str, dict | None] = {}  # hold_named(): the holds lock_card_for read already

    # -- cards -------------------------------------------------------------------------------
    def get_card(self, number: str, *, lock: bool = False):
        """A discount card (a gift certificate's account row, status "Certificate", is not one)."""
        stmt = select(cards).where(cards.c.number == number, cards.c.status != CERTIFICATE_ACCOUNT)
        if lock:
            stmt = stmt.with_for_update()
        return self.conn.execute(stmt).mappings().first()

    def card_with_lots(self, number: str) -> tuple[dict | None, list[Lot]]:
        """The card row and the lots that matter now (as ``load_lots``), in one statement: one snapshot,
        one round trip. (None, []) when there is no such card."""
        card, lots, _ = self._card_rows(_CARD_WITH_LOTS, {"number": number})
        return card, lots

    def lock_card_for(self, number: str, operation_id: str) -> tuple[dict | None, dict | None, list[Lot] | None]:
        """What applying an operation to a card needs, read under the card's lock in one round trip:
        (the operation with this id if it exists already, the card row, the card's lots). The hold named
        by the same id is read with them and answered by ``hold_named``.

        On PostgreSQL the lock (``SELECT ... FOR UPDATE``) and the read are two statements sent at once:
        the read is a statement of its own, so it takes its snapshot after the lock is granted and sees
        what the card's previous writer committed (one statement that locked and read would read the
        lots as they were before it waited for the lock). On SQLite the writer's transaction holds the
        database's write lock already. When the card does not exist the operation is looked up alone. On a
        ``pg_folded.FoldingRepository`` the transaction's BEGIN travels in the same round trip."""
        params = {"number": number, "operation_id": operation_id}
        if self._conn.dialect.name == "postgresql":
            card, lots, existing = self._card_rows(_LOCK_AND_READ, params, hold_id=operation_id,
                                                   prefix=self._begin_with())
        else:
            card, lots, existing = self._card_rows(_CARD_WITH_LOTS_AND_OPERATION, params, hold_id=operation_id)
        if card is None:
            return self.get_operation(operation_id), None, None
        return existing, card, lots

    def hold_named(self, operation_id: str):
        """The hold (ReserveBonus) whose id is this OperationId, or None: as ``lock_card_for`` read it under
        the card's lock when it did (once), else read now."""
        if operation_id in self._holds_read:
            return self._holds_read.pop(operation_id)
        return self.conn.execute(select(holds).where(holds.c.id == operation_id)).mappings().first()

    def _begin_with(self) -> str:
        """What the transaction's first statement carries in front of it: nothing here (the DBAPI begins the
        transaction); ``"BEGIN; "`` on a ``pg_folded.FoldingRepository`` whose BEGIN is still to be sent."""
        return ""

    def _card_rows(self, read: "_Read", params, hold_id: str | None = None,
                   prefix: str = "") -> tuple[dict | None, list[Lot], dict | None]:
        # with a prefix (the transaction's BEGIN) the connection as it is: the statement begins the transaction
        rows = read.rows(self._conn if prefix else self.conn, params, prefix)
        if not rows:
            return None, [], None
        first = rows[0]
        card = dict(zip(read.card_names, first[:read.n_card]))
        if card["status"] == CERTIFICATE_ACCOUNT:  # a gift certificate's account is no card
            return None, [], None
        existing = None
        if read.op_at is not None and first[read.op_at] is not None:
            existing = dict(zip(read.op_names, first[read.op_at:read.op_at + len(read.op_names)]))
        if hold_id is not None and read.hold_at is not None:
            self._holds_read[hold_id] = (dict(zip(read.hold_names, first[read.hold_at:]))
                                         if first[read.hold_at] is not None else None)
        n = read.n_card
        found = [Lot(id=r[n], measure=Measure(r[n + 1]), remaining=r[n + 2], available_from=r[n + 3],
                     expires_at=r[n + 4], exclusive=r[n + 5])
                 for r in rows if r[n] is not None]
        return card, found, existing

    def cards_by_phone(self, phone: str):
        stmt = select(cards).where(cards.c.phone == phone).order_by(cards.c.number)
        return self.conn.execute(stmt).mappings().all()

    def existing_card_numbers(self, numbers: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(numbers), 500):
            chunk = numbers[i:i + 500]
            found.update(self.conn.execute(select(cards.c.number).where(
                cards.c.number.in_(chunk), cards.c.status != CERTIFICATE_ACCOUNT)).scalars())
        return found

    def insert_cards(self, rows: list[dict]) -> None:
        if rows:
            self.conn.execute(insert(cards), rows)

    def update_card(self, number: str, **values) -> int:
        return self.conn.execute(update(cards).where(cards.c.number == number, cards.c.status != CERTIFICATE_ACCOUNT)
                                 .values(**values)).rowcount

    def update_cards_between(self, first: str, last: str, **values) -> int:
        return self.conn.execute(update(cards).where(cards.c.number.between(first, last),
                                                     cards.c.status != CERTIFICATE_ACCOUNT).values(**values)).rowcount

    def update_cards_where(self, condition, **values) -> int:
        return self.conn.execute(update(cards).where(condition).values(**values)).rowcount

    @staticmethod
    def card_rules(row) -> CardRules:
        """The card's life rules (immutable: cards with the same rules share them)."""
        key = (row["accumulation_delay_days"], row["accumulation_lifetime_days"], row["count_delay_days"],
               row["count_lifetime_days"])
        rules = _CARD_RULES.get(key)
        if rules is None:
            rules = CardRules(accumulation=LifeRule(key[0], key[1]), receipt_count=LifeRule(key[2], key[3]))
            if len(_CARD_RULES) >= 1024:
                _CARD_RULES.clear()
            _CARD_RULES[key] = rules
        return rules

    # -- promotions --------------------------------------------------------------------------
    def get_promotion(self, code: str) -> Promotion | None:
        row = self.conn.execute(select(promotions).where(promotions.c.code == code)).mappings().first()
        return None if row is None else _promotion(row)

    def promotion_rows(self):
        return self.conn.execute(select(promotions).order_by(promotions.c.code)).mappings().all()

    def insert_promotion(self, **values) -> None:
        self.conn.execute(insert(promotions).values(**values))

    def update_promotion(self, code: str, **values) -> int:
        return self.conn.execute(update(promotions).where(promotions.c.code == code).values(**values)).rowcount

    # -- holds -------------------------------------------------------------------------------
    def get_hold(self, hold_id: str):
        """The hold (ReserveBonus) made under this OperationId, or None."""
        from .program_repo import ProgramRepository

        return ProgramRepository(self.conn).get_hold(hold_id)

    # -- users -------------------------------------------------------------------------------
    def get_user(self, name: str):
        return self.conn.execute(select(users).where(users.c.name == name)).mappings().first()

    def list_users(self):
        return self.conn.execute(select(users).order_by(users.c.name)).mappings().all()

    def upsert_user(self, name: str, password_hash: str, now: datetime) -> bool:
        """Insert or replace a user's password; returns True when the user is new."""
        if self.get_user(name) is None:
            self.conn.execute(insert(users).values(name=name, password_hash=password_hash,
                                                   created_at=now, disabled=False))
            return True
        self.conn.execute(update(users).where(users.c.name == name)
                          .values(password_hash=password_hash, disabled=False))
        return False

    def update_user(self, name: str, **values) -> int:
        return self.conn.execute(update(users).where(users.c.name == name).values(**values)).rowcount

    def disable_user(self, name: str) -> int:
        return self.conn.execute(update(users).where(users.c.name == name).values(disabled=True)).rowcount

    # -- lots --------------------------------------------------------------------------------
    def load_lots(self, card_number: str, extra_ids: Iterable[int] = ()) -> list[Lot]:
        """The card's lots that matter now: non-empty ones, the never-ending buckets (reused for new
        credits and debts), and any named by id (those an original operation touched)."""
        return self._lots_of([card_number], extra_ids)[card_number]

    def _lots_of(self, numbers: list[str], extra_ids: Iterable[int] = ()) -> dict[str, list[Lot]]:
        extra = sorted(set(extra_ids))
        cond = or_(lots.c.remaining != 0,
                   and_(lots.c.available_from.is_(None), lots.c.expires_at.is_(None)))
        if extra:
            cond = or_(cond, lots.c.id.in_(extra))
        rows = self.conn.execute(
            select(lots.c.id, lots.c.card_number, lots.c.measure, lots.c.remaining, lots.c.available_from,
                   lots.c.expires_at, lots.c.exclusive)
            .where(lots.c.card_number.in_(numbers), cond)
            .order_by(lots.c.id)
        ).all()
        found: dict[str, list[Lot]] = {n: [] for n in numbers}
        for r in rows:
            found[r.card_number].append(Lot(id=r.id, measure=Measure(r.measure), remaining=r.remaining,
                                            available_from=r.available_from, expires_at=r.expires_at,
                                            exclusive=r.exclusive))
        return found

    def save_moves(self, card_number: str, operation_id: str, moves: list[Move], now: datetime) -> None:
        """Write the planned moves: new lots (born with their final remaining), one entry per move, and
        the other touched lots' new remaining. A few statements whatever the number of moves."""
        deltas: dict[int, Decimal] = {}
        new: dict[int, Lot] = {}
        for m in moves:
            if m.lot.id is None:
                new[id(m.lot)] = m.lot
            else:
                deltas[m.lot.id] = deltas.get(m.lot.id, ZERO) + m.amount
        if new:
            born = list(new.values())
            ids = self.conn.execute(
                insert(lots).returning(lots.c.id, sort_by_parameter_order=True),
                [dict(card_number=card_number, measure=lot.measure.value, remaining=lot.remaining,
                      available_from=lot.available_from, expires_at=lot.expires_at, created_at=now,
                      origin_operation_id=operation_id, exclusive=lot.exclusive) for lot in born]).scalars().all()
            for lot, lot_id in zip(born, ids):
                lot.id = lot_id
        rows = [dict(operation_id=operation_id, lot_id=m.lot.id, card_number=card_number,
                     measure=m.lot.measure.value, role=m.role.value, amount=m.amount) for m in moves]
        # relative updates: the nightly regulation may burn other lots of this card at the same time
        changed = sorted((k, v) for k, v in deltas.items() if v != 0)
        if rows and changed and self.conn.dialect.name == "postgresql":
            # the entries and the lots' new remaining in one statement (one round trip), of one shape
            # whatever the number of moves (arrays), so it is parsed and compiled once
            self._write_later(_ENTRIES_AND_LOTS, {
                "operation_id": operation_id, "card_number": card_number,
                "lot_ids": [r["lot_id"] for r in rows], "measures": [r["measure"] for r in rows],
                "roles": [r["role"] for r in rows], "amounts": [_raw_cents(r["amount"]) for r in rows],
                "changed_ids": [k for k, _ in changed], "deltas": [_raw_cents(v) for _, v in changed]})
            return
        if rows:
            self.conn.execute(insert(entries), rows)
        if changed:
            self.conn.execute(_ADD_TO_LOT, [{"lot_id": k, "delta": v} for k, v in changed])

    def insert_operation_with_moves(self, values: dict, moves: list[Move], now: datetime) -> None:
        """``insert_operation(**values)`` then ``save_moves`` of the operation's moves. On PostgreSQL, when the
        moves touch only existing lots (a sale's usual case), all of it is one statement of fixed shape: the
        operation, its entries and the lots' new remaining (data-modifying CTEs; the entries' foreign key
        to the operation is checked at the end of the statement). A duplicate id raises IntegrityError as
        the separate INSERT did."""
        if (self.conn.dialect.name == "postgresql" and moves and all(m.lot.id is not None for m in moves)
                and values.keys() <= _OPERATION_COLUMNS_SET):
            deltas: dict[int, Decimal] = {}
            for m in moves:
                deltas[m.lot.id] = deltas.get(m.lot.id, ZERO) + m.amount
            changed = sorted((k, v) for k, v in deltas.items() if v != 0)
            if changed:
                params = {f"op_{c}": values.get(c) for c in _OPERATION_COLUMNS}
                params.update({
                    "lot_ids": [m.lot.id for m in moves], "measures": [m.lot.measure.value for m in moves],
                    "roles": [m.role.value for m in moves], "amounts": [_raw_cents(m.amount) for m in moves],
                    "changed_ids": [k for k, _ in changed], "deltas": [_raw_cents(v) for _, v in changed]})
                self._write_later(_OPERATION_ENTRIES_AND_LOTS, params)
                return
        self.insert_operation(**values)
        self.save_moves(values["card_number"], values["id"], moves, now)

    def _write_later(self, write: "_Write", params: dict) -> None:
        """Send a raw-path write: at once here; a ``pg_folded.FoldingRepository`` keeps it until the next
        statement or the commit, which it then carries (one round trip for the write and the COMMIT)."""
        write.execute(self.conn, params)

    # -- operations --------------------------------------------------------------------------
    def get_operation(self, operation_id: str):
        return self.conn.execute(select(operations).where(operations.c.id == operation_id)).mappings().first()

    def insert_operation(self, **values) -> None:
        self.conn.execute(insert(operations), [values])

    def return_totals(self, sale_id: str) -> dict[str, Decimal]:
        row = self.conn.execute(
            select(
                func.coalesce(func.sum(operations.c.receipt_sum), 0).label("receipt_sum"),
                func.coalesce(func.sum(operations.c.bonus_accrued), 0).label("bonus_accrued"),
                func.coalesce(func.sum(operations.c.bonus_spent), 0).label("bonus_spent"),
            ).where(operations.c.original_operation_id == sale_id, operations.c.kind == Kind.RETURN.value)
        ).mappings().one()
        totals = dict(row)
        totals["annulled"] = self.conn.execute(
            select(func.coalesce(func.sum(operations.c.bonus_accrued), 0))
            .where(operations.c.original_operation_id == sale_id, operations.c.kind == Kind.ANNULMENT.value)
        ).scalar_one()
        return totals

    def spend_sources(self, sale_id: str) -> list[tuple[int, Decimal]]:
        """(lot id, amount still refundable) for each lot the sale spent from, in draw order."""
        spent = self.conn.execute(
            select(entries.c.lot_id, func.sum(entries.c.amount).label("amount"), func.min(entries.c.id).label("first"))
            .where(entries.c.operation_id == sale_id, entries.c.role == Role.SPEND.value)
            .group_by(entries.c.lot_id).order_by("first")
        ).all()
        refunded = dict(self.conn.execute(
            select(entries.c.lot_id, func.sum(entries.c.amount))
            .join(operations, operations.c.id == entries.c.operation_id)
            .where(operations.c.original_operation_id == sale_id, entries.c.role == Role.REFUND.value)
            .group_by(entries.c.lot_id)
        ).all())
        return [(r.lot_id, -r.amount - refunded.get(r.lot_id, ZERO)) for r in spent]

    def credited_lots(self, sale_id: str) -> list[int]:
        """The lots the operation credited (any measure), oldest first."""
        return list(self.conn.execute(
            select(entries.c.lot_id).where(entries.c.operation_id == sale_id,
                                           entries.c.role.in_([Role.CREDIT.value, Role.CREDIT_DEFERRED.value]),
                                           entries.c.amount > 0)
            .group_by(entries.c.lot_id).order_by(entries.c.lot_id)
        ).scalars())

    def card_operations(self, card_number: str, start: datetime, end: datetime, limit: int | None = None,
                        after: str | None = None) -> list[OperationView] | None:
        """The card's operations in [start, end), ordered by (operation_time, created_at, id); at most
        ``limit``; with ``after`` (an operation id), those after it in that order (None: no such
        operation on this card)."""
        deferred = [r.value for r in DEFERRED_ROLES]

        def net(measure: Measure, posted):
            """What the operation did to the balance: its entries, except moves into lots that had not
            started (those are shown by the Accrual line that posts the lot); an Accrual line shows what
            it posted (its own columns)."""
            raw = type_coerce(entries.c.amount, BigInteger)  # whole hundredths, summed exactly
            moved = func.coalesce(func.sum(case(
                (and_(entries.c.measure == measure.value, entries.c.role.not_in(deferred)), raw), else_=0)), 0)
            return case((operations.c.kind == Kind.ACCRUAL.value, posted), else_=moved)

        page = []
        if after is not None:
            mark = self.conn.execute(
                select(operations.c.operation_time, operations.c.created_at, operations.c.id)
                .where(operations.c.id == after, operations.c.card_number == card_number)).first()
            if mark is None:
                return None
            t, c, i = operations.c.operation_time, operations.c.created_at, operations.c.id
            page.append(or_(t > mark.operation_time, and_(t == mark.operation_time, c > mark.created_at),
                            and_(t == mark.operation_time, c == mark.created_at, i > mark.id)))
        stmt = (
            select(operations.c.id, operations.c.operation_time, operations.c.kind, operations.c.source,
                   operations.c.kkm, operations.c.receipt_number,
                   net(Measure.BONUS, type_coerce(operations.c.bonus_accrued, BigInteger)).label("bonus"),
                   net(Measure.ACCUMULATION, type_coerce(operations.c.accumulation_delta, BigInteger)).label("acc"),
                   net(Measure.RECEIPT_COUNT, operations.c.receipt_count_delta * 100).label("cnt"))
            .select_from(operations.outerjoin(entries, entries.c.operation_id == operations.c.id))
            .where(operations.c.card_number == card_number,
                   operations.c.operation_time >= start, operations.c.operation_time < end, *page)
            .group_by(operations.c.id, operations.c.operation_time, operations.c.kind, operations.c.source,
                      operations.c.kkm, operations.c.receipt_number, operations.c.bonus_accrued,
                      operations.c.accumulation_delta, operations.c.receipt_count_delta, operations.c.created_at)
            .order_by(operations.c.operation_time, operations.c.created_at, operations.c.id)
        )
        if limit is not None:
            stmt = stmt.limit(limit)

        return [
            OperationView(operation_id=r.id, time=r.operation_time, kind=r.kind, source=r.source, kkm=r.kkm,
                          receipt_number=r.receipt_number, bonus=_cents(r.bonus), accumulation=_cents(r.acc),
                          receipt_count=int(r.cnt) // 100)
            for r in self.conn.execute(stmt).all()
        ]

    # -- verification ------------------------------------------------------------------------
    def lot_drift(self) -> list[tuple[int, Decimal, Decimal]]:
        """Lots whose remaining differs from the sum of their entries: (lot id, remaining, entries)."""
        sums = (select(entries.c.lot_id, func.sum(type_coerce(entries.c.amount, BigInteger)).label("total"))
                .group_by(entries.c.lot_id).subquery())
        raw_remaining = type_coerce(lots.c.remaining, BigInteger)
        rows = self.conn.execute(
            select(lots.c.id, lots.c.remaining, func.coalesce(sums.c.total, 0).label("total"))
            .select_from(lots.outerjoin(sums, sums.c.lot_id == lots.c.id))
            .where(raw_remaining != func.coalesce(sums.c.total, 0))
        ).all()
        return [(r.id, r.remaining, _cents(r.total)) for r in rows]


_ADD_TO_LOT = (update(lots).where(lots.c.id == bindparam("lot_id"))
               .values(remaining=lots.c.remaining + bindparam("delta", type_=lots.c.remaining.type)))


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


def _promotion(row) -> Promotion:
    return Promotion(code=row["code"], name=row["name"], valid_from=row["valid_from"], valid_to=row["valid_to"],
                     rule=LifeRule(row["delay_days"], row["lifetime_days"], row["until_date"]))


def _raw_cents(amount: Decimal) -> int:
    """Money as the whole hundredths stored (what ``Cents`` binds)."""
    return lots.c.remaining.type.process_bind_param(amount, None)


def _cents(raw) -> Decimal:
    """A raw sum of whole hundredths as money."""
    return Decimal(int(raw)).scaleb(-2).quantize(Decimal("0.01"))


class BatchRepository(Repository):
    """A repository for applying many operations in one transaction with few round trips (the journal
    import): the operations, cards, lots, holds and promotions the batch needs are read at once, kept in
    memory as the operations change them, and written at ``flush()``. What it does not hold (the history
    of a sale being returned) is read from the database after a flush.

    ``requests`` are (card number, operation id, original operation id or None) of the batch's rows. The
    operations are read first (one set-based statement): a row whose id exists already is a duplicate
    (AlreadyApplied or OperationConflict), so its card is neither locked nor read. The other rows' cards
    are locked in number order and read with their lots in one statement each. On PostgreSQL every read
    takes the batch's keys as arrays (``= ANY``) and ``flush()`` writes with COPY; on SQLite (one writer
    at a time) the same reads go in chunks of 500 and the writes as multi-row INSERTs."""

    def __init__(self, conn: Connection, requests: Iterable[tuple[str, str, str | None]]):
        super().__init__(conn)
        requests = list(requests)
        self._pg = conn.dialect.name == "postgresql"
        ids = sorted({op_id for _, op_id, _ in requests})
        originals = sorted({orig for _, _, orig in requests if orig} - set(ids))
        self._looked_up = set(ids)  # ids read at the start: those not found do not exist (yet)
        self._ops = {r["id"]: r for r in self._read(_OPS_BY_IDS, operations, operations.c.id, ids + originals)}
        numbers = sorted({number for number, op_id, _ in requests if number and op_id not in self._ops})
        self._cards = {r["number"]: r for r in self._read(
            _CARDS_LOCKED, cards, cards.c.number, numbers,
            lambda stmt: stmt.where(cards.c.status != CERTIFICATE_ACCOUNT).order_by(cards.c.number).with_for_update())}
        self._lots: dict[str, list[Lot]] = {n: [] for n in self._cards}
        held = sorted(self._cards)
        if self._pg:
            self._read_lots(held)
        else:
            for i in range(0, len(held), 500):
                self._lots.update(self._lots_of(held[i:i + 500]))
        # holds are made under their card's lock, so what is read now stays true for the batch's cards
        fresh = [op_id for number, op_id, _ in requests if op_id not in self._ops]
        self._hold_ids = set(fresh)
        self._holds = {r["id"]: r for r in self._read(_HOLDS_BY_IDS, holds, holds.c.id, sorted(set(fresh)))}
        self._promotions: dict[str, Promotion | None] = {}
        self._new_ops: list[dict] = []
        self._new_lots: list[tuple[str, str, Lot]] = []
        self._new_lot_keys: set[int] = set()
        self._entries: list[tuple[str, Lot, str, Move]] = []
        self._deltas: dict[int, Decimal] = {}

    def _read_lots(self, numbers: list[str]) -> None:
        """PostgreSQL: the lots of the batch's cards (``_LOTS_OF_CARDS_SQL``'s rows) as the driver returns them,
        converted as their column types convert them (``Cents``: whole hundredths to money, ``UTCDateTime``:
        naive UTC to aware), each distinct amount and time once (a batch's lots repeat them)."""
        cents: dict[int, Decimal] = {}
        times: dict[datetime, datetime] = {None: None}
        to_money, utc, measures, by_card = _CENTS.process_result_value, timezone.utc, _MEASURES, self._lots
        for lot_id, number, measure, raw, start, end, exclusive in self.conn.exec_driver_sql(
                _LOTS_OF_CARDS_SQL, {"numbers": numbers}):
            remaining = cents.get(raw)
            if remaining is None:
                remaining = cents[raw] = to_money(raw, None)
            available_from = times.get(start)
            if available_from is None and start is not None:
                available_from = times[start] = start.replace(tzinfo=utc)
            expires_at = times.get(end)
            if expires_at is None and end is not None:
                expires_at = times[end] = end.replace(tzinfo=utc)
            by_card[number].append(Lot(id=lot_id, measure=measures[measure], remaining=remaining,
                                       available_from=available_from, expires_at=expires_at, exclusive=exclusive))

    def _read(self, pg_stmt, table, key, values: list, shape=None) -> list:
        """Rows of ``table`` whose ``key`` is one of ``values``: one statement on PostgreSQL, chunks of
        500 on SQLite."""
        if not values:
            return []
        if self._pg:
            return list(self.conn.execute(pg_stmt, {"keys": values}).mappings())
        found = []
        for i in range(0, len(values), 500):
            stmt = select(table).where(key.in_(values[i:i + 500]))
            found.extend(self.conn.execute(shape(stmt) if shape else stmt).mappings())
        return found

    def get_card(self, number: str, *, lock: bool = False):
        if number in self._cards:
            return self._cards[number]
        return super().get_card(number, lock=lock)

    def lock_card_for(self, number: str, operation_id: str):
        """From what the batch holds (its cards are locked already); lots None when not held."""
        existing = self.get_operation(operation_id)
        if existing is not None:
            return existing, None, None
        card = self.get_card(number, lock=True)
        return None, card, (self._lots.get(number) if card is not None else None)

    def plain_card(self, number: str, operation_id: str) -> tuple[dict, list[Lot]] | None:
        """(card row, its lots) when ``operation_id`` is known new (read at the start, not applied since),
        names no hold, and the batch holds the card with its lots; else None (see
        ``BillingService._apply_plain_sale``)."""
        if operation_id in self._ops or operation_id not in self._looked_up or operation_id not in self._hold_ids \
                or self._holds.get(operation_id) is not None:
            return None
        card = self._cards.get(number)
        lots = self._lots.get(number)
        if card is None or lots is None:
            return None
        return card, lots

    def get_operation(self, operation_id: str):
        if operation_id in self._ops:
            return self._ops[operation_id]
        if operation_id in self._looked_up:
            return None
        self.flush()
        return super().get_operation(operation_id)

    def get_hold(self, hold_id: str):
        if hold_id in self._hold_ids:
            return self._holds.get(hold_id)
        return super().get_hold(hold_id)

    hold_named = get_hold  # the batch read its holds in one statement (its lock_card_for reads none)

    def get_promotion(self, code: str) -> Promotion | None:
        if code not in self._promotions:
            self._promotions[code] = super().get_promotion(code)
        return self._promotions[code]

    def load_lots(self, card_number: str, extra_ids: Iterable[int] = ()) -> list[Lot]:
        if card_number in self._lots and not extra_ids:
            return self._lots[card_number]
        # read from the database (after writing what is pending); the card is not cached from now on
        self.flush()
        self._lots.pop(card_number, None)
        return super().load_lots(card_number, extra_ids)

    def insert_operation_with_moves(self, values: dict, moves: list[Move], now: datetime) -> None:
        self.insert_operation(**values)  # kept in memory and written at flush()
        self.save_moves(values["card_number"], values["id"], moves, now)

    def insert_operation(self, **values) -> None:
        self._new_ops.append(values)
        self._ops[values["id"]] = values

    def save_moves(self, card_number: str, operation_id: str, moves: list[Move], now: datetime) -> None:
        cached = self._lots.get(card_number)
        for m in moves:
            if m.lot.id is None:
                if id(m.lot) not in self._new_lot_keys:
                    self._new_lot_keys.add(id(m.lot))
                    self._new_lots.append((card_number, operation_id, m.lot))
                    if cached is not None:
                        cached.append(m.lot)
            else:
                self._deltas[m.lot.id] = self._deltas.get(m.lot.id, ZERO) + m.amount
            self._entries.append((operation_id, m.lot, card_number, m))
        self._now = now

    def flush(self) -> None:
        """Write what the batch did so far: operations, new lots, entries, lots' new remaining."""
        if self._pg:
            self._flush_copy()
        else:
            self._flush_inserts()
        self._new_ops, self._new_lots, self._entries, self._deltas = [], [], [], {}
        self._new_lot_keys = set()

    def _new_lot_rows(self) -> list[dict]:
        return [dict(card_number=card, measure=lot.measure.value, remaining=lot.remaining,
                     available_from=lot.available_from, expires_at=lot.expires_at, created_at=self._now,
                     origin_operation_id=op_id, exclusive=lot.exclusive) for card, op_id, lot in self._new_lots]

    def _entry_rows(self) -> list[dict]:
        return [dict(operation_id=op_id, lot_id=lot.id, card_number=card, measure=lot.measure.value,
                     role=m.role.value, amount=m.amount) for op_id, lot, card, m in self._entries]

    def _flush_inserts(self) -> None:
        if self._new_ops:
            for i in range(0, len(self._new_ops), 1000):
                self.conn.execute(insert(operations), self._new_ops[i:i + 1000])
        if self._new_lots:
            ids = self.conn.execute(insert(lots).returning(lots.c.id, sort_by_parameter_order=True),
                                    self._new_lot_rows()).scalars().all()
            for (_, _, lot), lot_id in zip(self._new_lots, ids):
                lot.id = lot_id
        if self._entries:
            self.conn.execute(insert(entries), self._entry_rows())
        changed = [{"lot_id": k, "delta": v} for k, v in sorted(self._deltas.items()) if v != 0]
        if changed:
            self.conn.execute(_ADD_TO_LOT, changed)

    def _flush_copy(self) -> None:
        """PostgreSQL: operations, lots (their ids taken from the sequence first) and entries with COPY,
        the lots' new remaining in one UPDATE over arrays."""
        if self._new_ops:
            self._copy_operations()
        if self._new_lots:
            ids = sorted(self.conn.execute(_NEXT_LOT_IDS, {"n": len(self._new_lots)}).scalars())
            texts = _CopyTexts()
            created = texts.repeated(self._now)
            lines = []
            for (card, op_id, lot), lot_id in zip(self._new_lots, ids):
                lot.id = lot_id
                lines.append(f"{lot_id}\t{texts.text(card)}\t{_ENUM_TEXTS[id(lot.measure)]}\t{texts.cents(lot.remaining)}\t"
                             f"{texts.repeated(lot.available_from)}\t{texts.repeated(lot.expires_at)}\t{created}\t"
                             f"{texts.unique(op_id)}\t{'t' if lot.exclusive else 'f'}\n")
            copy_lines(self.conn, "lots", _NEW_LOT_COLUMNS, lines)
        if self._entries:
            self._copy_entries()
        changed = sorted((k, v) for k, v in self._deltas.items() if v != 0)
        if changed:
            self.conn.execute(_ADD_TO_LOTS, {"ids": [k for k, _ in changed],
                                             "deltas": [_raw_cents(v) for _, v in changed]})

    def _copy_operations(self) -> None:
        """The operations' COPY lines, those of ``apply``'s shape (every column of
        ``_OPERATION_COLUMNS``, ``actor`` may be left out) made straight from their values as
        ``copy_rows`` would write them (texts escaped, amounts as whole hundredths, times as naive UTC),
        the values that repeat converted once; any other shape through ``copy_rows``."""
        plain, other = [], []
        full, lean = _OPERATION_COLUMNS_SET, _OPERATION_COLUMNS_SET - {"actor"}
        for values in self._new_ops:
            keys = values.keys()
            (plain if keys == full or keys == lean else other).append(values)
        if other:
            copy_rows(self.conn, operations, other)
        if not plain:
            return
        texts = _CopyTexts()
        text_of, cents_of, time_of, day_of, unique = texts.text, texts.cents, texts.time, texts.repeated, texts.unique
        lines = [f"{unique(v['id'])}\t{text_of(v['card_number'])}\t{text_of(v['kind'])}\t{text_of(v['source'])}\t"
                 f"{text_of(v['kkm'])}\t{text_of(v['store'])}\t"
                 f"{unique(v['receipt_number'])}\t"
                 f"{time_of(v['operation_time'])}\t{day_of(v['business_date'])}\t{unique(v['content_hash'])}\t"
                 f"{cents_of(v['receipt_sum'])}\t{cents_of(v['bonus_accrued'])}\t{cents_of(v['bonus_spent'])}\t"
                 f"{cents_of(v['accumulation_delta'])}\t{int(v['receipt_count_delta'])}\t"
                 f"{text_of(v['promotion_code'])}\t"
                 f"{unique(v['original_operation_id'])}\t"
                 f"{day_of(v['created_at'])}\t{text_of(v.get('actor'))}\n" for v in plain]
        copy_lines(self.conn, "operations", _OPERATION_COLUMNS, lines)

    def _copy_entries(self) -> None:
        """The entries' COPY lines made straight from the moves (the most numerous rows: three a sale):
        an operation's id and card escaped once for its consecutive moves, measure and role as their
        texts (keyed by the members' identity: an enum member's hash is a Python call), each amount as
        the whole hundredths ``Cents`` stores, converted once per distinct amount."""
        cents: dict[Decimal, str] = {}
        names = _ENUM_TEXTS
        lines = []
        add = lines.append
        last_op = last_card = head = mid = None
        for op_id, lot, card, m in self._entries:
            if op_id is not last_op or card is not last_card:
                last_op, last_card = op_id, card
                head, mid = _copy_text(op_id) + "\t", "\t" + _copy_text(card) + "\t"
            amount = m.amount
            text = cents.get(amount)
            if text is None:
                text = cents[amount] = str(_raw_cents(amount))
            add(f"{head}{lot.id}{mid}{names[id(lot.measure)]}\t{names[id(m.role)]}\t{text}\n")
        copy_lines(self.conn, "entries", ("operation_id", "lot_id", "card_number", "measure", "role", "amount"),
                   lines)

    def return_totals(self, sale_id: str):
        self.flush()
        return super().return_totals(sale_id)

    def spend_sources(self, sale_id: str):
        self.flush()
        return super().spend_sources(sale_id)

    def credited_lots(self, sale_id: str):
        self.flush()
        return super().credited_lots(sale_id)


def _typed(sql: str, table) -> text:
    return text(sql).columns(*[column(c.name, c.type) for c in table.c])


# PostgreSQL, the batch's reads: one statement each, the keys as an array
_OPS_BY_IDS = _typed("SELECT * FROM operations WHERE id = ANY(CAST(:keys AS text[]))", operations)
_HOLDS_BY_IDS = _typed("SELECT * FROM holds WHERE id = ANY(CAST(:keys AS text[]))", holds)
_CARDS_LOCKED = _typed(  # locked in number order (the rows are locked as the sorted rows come)
    f"SELECT * FROM cards WHERE number = ANY(CAST(:keys AS text[])) AND status <> '{CERTIFICATE_ACCOUNT}' "
    "ORDER BY number FOR UPDATE", cards)
_LOTS_OF_CARDS_SQL = (  # read through the driver (BatchRepository._read_lots converts the values)
    "SELECT id, card_number, measure, remaining, available_from, expires_at, exclusive FROM lots "
    "WHERE card_number = ANY(CAST(%(numbers)s AS text[])) "
    "AND (remaining <> 0 OR (available_from IS NULL AND expires_at IS NULL)) ORDER BY id")
_CENTS = lots.c.remaining.type
_MEASURES = {m.value: m for m in Measure}
_NEXT_LOT_IDS = text("SELECT nextval(pg_get_serial_sequence('lots', 'id')) FROM generate_series(1, :n)")
_ADD_TO_LOTS = text("UPDATE lots SET remaining = lots.remaining + d.delta "
                    "FROM unnest(CAST(:ids AS bigint[]), CAST(:deltas AS bigint[])) AS d (lot_id, delta) "
                    "WHERE lots.id = d.lot_id")


_ENUM_TEXTS = {id(member): member.value for member in (*Measure, *Role)}  # COPY-safe texts (no tab, backslash)
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_MEMO_LIMIT = 4096  # converted values remembered per column and COPY (amounts, names, times repeat)


def _copy_text(value: str) -> str:
    """Text in COPY's text format: backslash, tab and line breaks escaped."""
    if value.isprintable() and "\\" not in value:  # the common case, without a regular expression
        return value
    if _COPY_SPECIAL.search(value) is None:
        return value
    return _COPY_SPECIAL.sub(lambda m: _COPY_ESCAPES[m.group()], value)


def _copy_converter(col, dialect):
    """value -> its COPY text (None -> \\N), chosen once per column from its type. Values that repeat
    (amounts, measures, roles, a batch's time) are converted once: the result is remembered."""
    proc = col.type.bind_processor(dialect)
    python = getattr(col.type, "impl_instance", col.type)
    try:
        kind = python.python_type
    except NotImplementedError:
        kind = str
    if kind is bool:
        return lambda v: "\\N" if v is None else ("t" if v else "f")
    if kind is datetime and isinstance(col.type, UTCDateTime):
        # stored as naive UTC: an aware UTC time's ISO form is it (PostgreSQL ignores the offset of a
        # timestamp without time zone), any other offset goes through the column's own conversion
        def utc_time(v, _utc=timezone.utc):
            if v is None:
                return "\\N"
            return v.isoformat() if v.tzinfo is _utc else proc(v).isoformat()
        return utc_time
    if kind in (datetime, date):
        base = (lambda v: proc(v).isoformat()) if proc else (lambda v: v.isoformat())
    elif kind in (int, Decimal, float):
        base = (lambda v: str(proc(v))) if proc else str
    else:
        base = (lambda v: _copy_text(str(proc(v)))) if proc else (lambda v: _copy_text(str(v)))
    memo: dict = {None: "\\N"}

    def remembered(v):
        try:
            out = memo.get(v)
        except TypeError:  # not hashable
            return base(v)
        if out is None:
            out = base(v)
            if len(memo) < _MEMO_LIMIT:
                memo[v] = out
        return out
    return remembered


class _CopyTexts:
    """Values in COPY's text format as ``copy_rows``' converters write them (NULL as \\N, texts escaped,
    money as the whole hundredths ``Cents`` stores, times as naive UTC ``UTCDateTime`` stores), for the
    COPY lines the batch makes straight from its values; those that repeat are converted once."""

    def __init__(self):
        self.memo: dict = {None: "\\N"}
        self.money: dict = {None: "\\N"}

    def text(self, value) -> str:
        """A text that repeats (a card, a kind, a register, a file's name)."""
        out = self.memo.get(value)
        if out is None:
            out = self.memo[value] = _copy_text(str(value))
        return out

    @staticmethod
    def unique(value, _null="\\N") -> str:
        return _null if value is None else _copy_text(str(value))

    def cents(self, amount) -> str:
        out = self.money.get(amount)
        if out is None:
            out = self.money[amount] = str(_raw_cents(amount))
        return out

    @staticmethod
    def time(value, _utc=timezone.utc) -> str:
        if value is None:
            return "\\N"
        if value.tzinfo is _utc:
            return value.isoformat()
        return value.astimezone(_utc).replace(tzinfo=None).isoformat()

    def repeated(self, value) -> str:
        """A date, or a time that repeats (the batch's time, a lot's start and end)."""
        key = (type(value), value)
        out = self.memo.get(key)
        if out is None:
            out = self.memo[key] = value.isoformat() if type(value) is date else self.time(value)
        return out


def copy_journal_keys(conn: Connection, rows: list[dict]) -> None:
    """PostgreSQL: ``journal_keys`` rows (kkm, transaction_number, transaction_time, operation_id,
    created_at) with one COPY, the lines made straight from the values."""
    texts = _CopyTexts()
    copy_lines(conn, "journal_keys", _JOURNAL_KEY_COLUMNS, [
        f"{texts.text(r['kkm'])}\t{texts.unique(r['transaction_number'])}\t{texts.time(r['transaction_time'])}\t"
        f"{texts.unique(r['operation_id'])}\t{texts.repeated(r['created_at'])}\n" for r in rows])


_JOURNAL_KEY_COLUMNS = ("kkm", "transaction_number", "transaction_time", "operation_id", "created_at")
_NEW_LOT_COLUMNS = ("id", "card_number", "measure", "remaining", "available_from", "expires_at", "created_at",
                    "origin_operation_id", "exclusive")


def copy_rows(conn: Connection, table, rows: list[dict]) -> None:
    """PostgreSQL: insert ``rows`` (dicts of column values, as for ``insert(table)``) with one COPY. A
    column a row leaves out takes its Python default (or NULL). Errors come back as SQLAlchemy's (an
    IntegrityError for a duplicate key, as an INSERT would raise)."""
    from operator import itemgetter

    present = set().union(*rows)
    names = [c.name for c in table.c
             if c.name in present or (c.default is not None and getattr(c.default, "is_scalar", False))]
    defaults = {name: table.c[name].default.arg for name in names
                if table.c[name].default is not None and getattr(table.c[name].default, "is_scalar", False)}
    convs = [_copy_converter(table.c[name], conn.dialect) for name in names]
    values = itemgetter(*names) if len(names) > 1 else (lambda r, _n=names[0]: (r[_n],))
    width = len(names)
    lines = []
    for r in rows:
        if len(r) != width:  # a column left out: its default (or NULL)
            r = {**defaults, **r}
            r = {name: r.get(name) for name in names}
        lines.append("\t".join([conv(v) for conv, v in zip(convs, values(r))]) + "\n")
    copy_lines(conn, table.name, names, lines)


def copy_lines(conn: Connection, table_name: str, names, lines: list[str]) -> None:
    """PostgreSQL: COPY ``lines`` (each a row in COPY's text format, ending in a line break) into the
    columns ``names`` of ``table_name``; errors come back as SQLAlchemy's."""
    import io

    import psycopg2

    from sqlalchemy.exc import DBAPIError

    buf = io.StringIO("".join(lines))
    statement = f"COPY {table_name} ({', '.join(names)}) FROM STDIN"
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.copy_expert(statement, buf, size=1 << 20)  # the buffer in few reads
    except psycopg2.Error as exc:
        raise DBAPIError.instance(statement, None, exc, psycopg2.Error) from exc
    finally:
        cursor.close()
