"""The journal import's repository: a batch of operations applied in one transaction with few round trips
(``BatchRepository``), and the COPY writers it and the journal's keys use (docs/performance.md §8)."""
from __future__ import annotations

import re
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Iterable

from sqlalchemy import column, insert, select, text
from sqlalchemy.engine import Connection

from ..domain.certificates import ACCOUNT_STATUS as CERTIFICATE_ACCOUNT
from ..domain.ledger import Move
from ..domain.model import ZERO, Lot, Measure, Role
from ..domain.rules import Promotion
from .db import UTCDateTime, cards, entries, holds, lots, operations
from .pg_raw import _OPERATION_COLUMNS, _OPERATION_COLUMNS_SET
from .repository import _ADD_TO_LOT, Repository, _raw_cents


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
