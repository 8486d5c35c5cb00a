"""SQL access for the card ledger on one open connection: a card, its lots and rules, operations and their
entries, holds, promotions, users. The online path's hot statements live in ``pg_raw`` (prebuilt, prepared,
on the DBAPI cursor); the journal import's batch in ``batch_repository``."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Iterable

from sqlalchemy import BigInteger, and_, bindparam, case, func, insert, or_, select, type_coerce, update
from sqlalchemy.engine import Connection

from ..domain.ledger import Move
from ..domain.model import DEFERRED_ROLES, ZERO, Kind, Lot, Measure, OperationView, Role
from ..domain.rules import CardRules, LifeRule, Promotion
from .db import cards, entries, holds, lots, operations, promotions, users
from .pg_raw import (_CARD_WITH_LOTS, _CARD_WITH_LOTS_AND_OPERATION, _ENTRIES_AND_LOTS,
                     _LOCK_AND_READ, _OPERATION_COLUMNS, _OPERATION_COLUMNS_SET, _OPERATION_ENTRIES_AND_LOTS, _Read,
                     _Write)

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




def _promotion(row) -> Promotion:
    return Promotion(code=row["code"], name=row["name"], valid_from=row["valid_from"], valid_to=row["valid_to"],
                     rule=LifeRule(row["delay_days"], row["lifetime_days"], row["until_date"]))


def _raw_cents(amount: Decimal) -> int:
    """Money as the whole hundredths stored (what ``Cents`` binds)."""
    return lots.c.remaining.type.process_bind_param(amount, None)


def _cents(raw) -> Decimal:
    """A raw sum of whole hundredths as money."""
    return Decimal(int(raw)).scaleb(-2).quantize(Decimal("0.01"))
