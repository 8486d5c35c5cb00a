"""SQL access for the ledger: every query the service layer needs, on one open connection."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Iterable

from sqlalchemy import BigInteger, and_, case, func, insert, or_, select, type_coerce, update
from sqlalchemy.engine import Connection

from ..domain.ledger import Move
from ..domain.model import DEFERRED_ROLES, ZERO, Kind, Lot, Measure, OperationView, Role
from ..domain.rules import CardRules, LifeRule, Promotion
from .db import cards, entries, lots, operations, promotions, users


class Repository:
    def __init__(self, conn: Connection):
        self.conn = conn

    # -- cards -------------------------------------------------------------------------------
    def get_card(self, number: str, *, lock: bool = False):
        stmt = select(cards).where(cards.c.number == number)
        if lock:
            stmt = stmt.with_for_update()
        return self.conn.execute(stmt).mappings().first()

    def cards_by_phone(self, phone: str):
        stmt = select(cards).where(cards.c.phone == phone).order_by(cards.c.number)
        return self.conn.execute(stmt).mappings().all()

    def existing_card_numbers(self, numbers: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(numbers), 500):
            chunk = numbers[i:i + 500]
            found.update(self.conn.execute(select(cards.c.number).where(cards.c.number.in_(chunk))).scalars())
        return found

    def insert_cards(self, rows: list[dict]) -> None:
        if rows:
            self.conn.execute(insert(cards), rows)

    def update_card(self, number: str, **values) -> int:
        return self.conn.execute(update(cards).where(cards.c.number == number).values(**values)).rowcount

    def update_cards_between(self, first: str, last: str, **values) -> int:
        return self.conn.execute(update(cards).where(cards.c.number.between(first, last)).values(**values)).rowcount

    @staticmethod
    def card_rules(row) -> CardRules:
        return CardRules(
            accumulation=LifeRule(row["accumulation_delay_days"], row["accumulation_lifetime_days"]),
            receipt_count=LifeRule(row["count_delay_days"], row["count_lifetime_days"]),
        )

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

    def disable_user(self, name: str) -> int:
        return self.conn.execute(update(users).where(users.c.name == name).values(disabled=True)).rowcount

    # -- lots --------------------------------------------------------------------------------
    def load_lots(self, card_number: str, extra_ids: Iterable[int] = ()) -> list[Lot]:
        """The card's lots that matter now: non-empty ones, the never-ending buckets (reused for new
        credits and debts), and any named by id (those an original operation touched)."""
        extra = sorted(set(extra_ids))
        cond = or_(lots.c.remaining != 0,
                   and_(lots.c.available_from.is_(None), lots.c.expires_at.is_(None)))
        if extra:
            cond = or_(cond, lots.c.id.in_(extra))
        rows = self.conn.execute(
            select(lots.c.id, lots.c.measure, lots.c.remaining, lots.c.available_from, lots.c.expires_at,
                   lots.c.exclusive)
            .where(lots.c.card_number == card_number, cond)
            .order_by(lots.c.id)
        ).all()
        return [Lot(id=r.id, measure=Measure(r.measure), remaining=r.remaining,
                    available_from=r.available_from, expires_at=r.expires_at, exclusive=r.exclusive) for r in rows]

    def save_moves(self, card_number: str, operation_id: str, moves: list[Move], now: datetime) -> None:
        """Write the planned moves: new lots, one entry per move, each touched lot's new remaining."""
        for move in moves:
            lot = move.lot
            if lot.id is None:
                lot.id = self.conn.execute(
                    insert(lots).values(card_number=card_number, measure=lot.measure.value, remaining=ZERO,
                                        available_from=lot.available_from, expires_at=lot.expires_at,
                                        created_at=now, origin_operation_id=operation_id,
                                        exclusive=lot.exclusive).returning(lots.c.id)
                ).scalar_one()
        if moves:
            self.conn.execute(insert(entries), [
                dict(operation_id=operation_id, lot_id=m.lot.id, card_number=card_number,
                     measure=m.lot.measure.value, role=m.role.value, amount=m.amount)
                for m in moves
            ])
        # relative updates: the nightly regulation may burn other lots of this card at the same time
        deltas: dict[int, Decimal] = {}
        for m in moves:
            deltas[m.lot.id] = deltas.get(m.lot.id, ZERO) + m.amount
        for lot_id, delta in deltas.items():
            if delta != 0:
                self.conn.execute(update(lots).where(lots.c.id == lot_id)
                                  .values(remaining=lots.c.remaining + type_coerce(delta, lots.c.remaining.type)))

    # -- operations --------------------------------------------------------------------------
    def get_operation(self, operation_id: str):
        return self.conn.execute(select(operations).where(operations.c.id == operation_id)).mappings().first()

    def insert_operation(self, **values) -> None:
        self.conn.execute(insert(operations).values(**values))

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

    def card_operations(self, card_number: str, start: datetime, end: datetime) -> list[OperationView]:
        deferred = [r.value for r in DEFERRED_ROLES]

        def net(measure: Measure, posted):
            """What the operation did to the balance: its entries, except moves into lots that had not
            started (those are shown by the Accrual line that posts the lot); an Accrual line shows what
            it posted (its own columns)."""
            raw = type_coerce(entries.c.amount, BigInteger)  # whole hundredths, summed exactly
            moved = func.coalesce(func.sum(case(
                (and_(entries.c.measure == measure.value, entries.c.role.not_in(deferred)), raw), else_=0)), 0)
            return case((operations.c.kind == Kind.ACCRUAL.value, posted), else_=moved)

        stmt = (
            select(operations.c.id, operations.c.operation_time, operations.c.kind, operations.c.source,
                   operations.c.kkm, operations.c.receipt_number,
                   net(Measure.BONUS, type_coerce(operations.c.bonus_accrued, BigInteger)).label("bonus"),
                   net(Measure.ACCUMULATION, type_coerce(operations.c.accumulation_delta, BigInteger)).label("acc"),
                   net(Measure.RECEIPT_COUNT, operations.c.receipt_count_delta * 100).label("cnt"))
            .select_from(operations.outerjoin(entries, entries.c.operation_id == operations.c.id))
            .where(operations.c.card_number == card_number,
                   operations.c.operation_time >= start, operations.c.operation_time < end)
            .group_by(operations.c.id, operations.c.operation_time, operations.c.kind, operations.c.source,
                      operations.c.kkm, operations.c.receipt_number, operations.c.bonus_accrued,
                      operations.c.accumulation_delta, operations.c.receipt_count_delta, operations.c.created_at)
            .order_by(operations.c.operation_time, operations.c.created_at, operations.c.id)
        )

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


def _promotion(row) -> Promotion:
    return Promotion(code=row["code"], name=row["name"], valid_from=row["valid_from"], valid_to=row["valid_to"],
                     rule=LifeRule(row["delay_days"], row["lifetime_days"], row["until_date"]))


def _cents(raw) -> Decimal:
    """A raw sum of whole hundredths as money."""
    return Decimal(int(raw)).scaleb(-2).quantize(Decimal("0.01"))
