"""Read-only SQL of the web console: a card's history by pages, the dashboard's day-by-day turnovers and
its counters. Writes go through the service layer's use cases, never through here."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, and_, case, func, literal, select, type_coerce

from ..domain.model import DEFERRED_ROLES, CardStatus, Kind, Measure
from .db import cards, documents, entries, journal_rejects, lots, operations


def _cents(raw) -> Decimal:
    return Decimal(int(raw or 0)).scaleb(-2).quantize(Decimal("0.01"))


def history_count(conn, card_number: str) -> int:
    return conn.execute(select(func.count()).select_from(operations)
                        .where(operations.c.card_number == card_number)).scalar_one()


def history_page(conn, card_number: str, offset: int, limit: int) -> list[dict]:
    """One page of a card's operations, newest first, each with what it did to the balances — the same
    figures as GetCardOperations: moves into lots that had not started are shown by the Accrual line that
    posts them, an Accrual line shows what it posted. The page's ids are picked on the (card, time) index
    first, so a card with a long history costs one page, not its whole history."""
    page = (select(operations.c.id)
            .where(operations.c.card_number == card_number)
            .order_by(operations.c.operation_time.desc(), operations.c.created_at.desc(), operations.c.id.desc())
            .offset(offset).limit(limit)).subquery()
    deferred = [r.value for r in DEFERRED_ROLES]
    raw = type_coerce(entries.c.amount, BigInteger)

    def net(measure: Measure, posted):
        moved = func.coalesce(func.sum(case(
            (and_(entries.c.measure == measure.value, entries.c.role.not_in(deferred)), raw), else_=0)), 0)
        return case((operations.c.kind == Kind.ACCRUAL.value, posted), else_=moved)

    stmt = (
        select(operations.c.id, operations.c.operation_time, operations.c.kind, operations.c.source,
               operations.c.kkm, operations.c.store, operations.c.receipt_number, operations.c.receipt_sum,
               operations.c.original_operation_id, operations.c.note, operations.c.bonus_accrued.label("accrued"),
               net(Measure.BONUS, type_coerce(operations.c.bonus_accrued, BigInteger)).label("bonus"),
               net(Measure.ACCUMULATION, type_coerce(operations.c.accumulation_delta, BigInteger)).label("acc"),
               net(Measure.RECEIPT_COUNT, operations.c.receipt_count_delta * 100).label("cnt"))
        .select_from(operations.join(page, page.c.id == operations.c.id)
                     .outerjoin(entries, entries.c.operation_id == operations.c.id))
        .group_by(operations.c.id, operations.c.operation_time, operations.c.kind, operations.c.source,
                  operations.c.kkm, operations.c.store, operations.c.receipt_number, operations.c.receipt_sum,
                  operations.c.original_operation_id, operations.c.note, operations.c.bonus_accrued,
                  operations.c.accumulation_delta, operations.c.receipt_count_delta, operations.c.created_at)
        .order_by(operations.c.operation_time.desc(), operations.c.created_at.desc(), operations.c.id.desc())
    )
    return [dict(id=r.id, time=r.operation_time, kind=r.kind, source=r.source, kkm=r.kkm, store=r.store,
                 receipt_number=r.receipt_number, receipt_sum=r.receipt_sum,
                 original_operation_id=r.original_operation_id, note=r.note, accrued=r.accrued, bonus=_cents(r.bonus),
                 accumulation=_cents(r.acc), receipt_count=int(r.cnt) // 100)
            for r in conn.execute(stmt)]


def annulled_sales(conn, sale_ids: list[str]) -> set[str]:
    """Which of these sales had their bonuses annulled already."""
    if not sale_ids:
        return set()
    return set(conn.execute(select(operations.c.original_operation_id).where(
        operations.c.kind == Kind.ANNULMENT.value, operations.c.original_operation_id.in_(sale_ids))).scalars())


def bonus_turnovers_by_day(conn, bounds: list[datetime], roles: dict[str, str]) -> dict[tuple[int, str], Decimal]:
    """Bonus entries per business day and turnover column: {(day index, column): signed sum}.

    ``bounds`` are the starts of the days and the end of the last one (UTC instants), so day i is
    [bounds[i], bounds[i+1]). An entry takes effect when the balances report says it does: at its
    operation's time, or when its lot starts for a move into a lot that had not started. One scan; the
    day is found by a CASE over the bounds."""
    effective = case((entries.c.role.in_([r.value for r in DEFERRED_ROLES]), lots.c.available_from),
                     else_=operations.c.operation_time)
    day = case(*[(effective < b, literal(i - 1)) for i, b in enumerate(bounds) if i > 0], else_=literal(-1))
    raw = type_coerce(entries.c.amount, BigInteger)
    stmt = (select(day.label("day"), entries.c.role, func.sum(raw).label("amount"))
            .select_from(entries.join(operations, operations.c.id == entries.c.operation_id)
                         .join(lots, lots.c.id == entries.c.lot_id))
            .where(entries.c.measure == Measure.BONUS.value, entries.c.role.in_(list(roles)),
                   effective >= bounds[0], effective < bounds[-1])
            .group_by(day, entries.c.role))
    out: dict[tuple[int, str], Decimal] = {}
    for r in conn.execute(stmt):
        key = (int(r.day), roles[r.role])
        out[key] = out.get(key, Decimal("0.00")) + _cents(r.amount)
    return out


def bonus_liability(conn, now: datetime) -> tuple[Decimal, Decimal]:
    """(live, pending): the bonuses the cards hold now, the way GetCardInfo counts them (started and not
    burnt), and those credited to lots that start later."""
    live = and_(lots.c.measure == Measure.BONUS.value,
                (lots.c.available_from.is_(None)) | (lots.c.available_from <= now),
                (lots.c.expires_at.is_(None)) | (lots.c.expires_at > now))
    pending = and_(lots.c.measure == Measure.BONUS.value, lots.c.available_from > now)
    raw = type_coerce(lots.c.remaining, BigInteger)
    row = conn.execute(select(func.sum(case((live, raw), else_=0)), func.sum(case((pending, raw), else_=0)))
                       .where(lots.c.measure == Measure.BONUS.value)).one()
    return _cents(row[0]), _cents(row[1])


def card_counts(conn, since: datetime) -> dict[str, int]:
    """Cards in all, active (not blocked), and used in a sale or return since ``since``."""
    total, active = conn.execute(select(
        func.count(), func.coalesce(func.sum(case((cards.c.status == CardStatus.ACTIVE.value, 1), else_=0)), 0))
        .select_from(cards)).one()
    used = conn.execute(select(func.count(func.distinct(operations.c.card_number))).where(
        operations.c.kind.in_([Kind.SALE.value, Kind.RETURN.value]), operations.c.operation_time >= since)
    ).scalar_one()
    return dict(total=int(total), active=int(active), used=int(used))


def last_documents(conn, limit: int = 10) -> list[dict]:
    return [dict(r) for r in conn.execute(
        select(documents.c.kind, documents.c.business_date, documents.c.status, documents.c.lines,
               documents.c.started_at, documents.c.completed_at)
        .order_by(documents.c.business_date.desc(), documents.c.kind).limit(limit)).mappings()]


def pending_rejects(conn) -> int:
    return conn.execute(select(func.count()).select_from(journal_rejects)
                        .where(journal_rejects.c.status == "pending")).scalar_one()


def actions_with_progress(conn, limit: int | None = 200, action_id: str | None = None) -> list[dict]:
    """Actions, newest first, each with how many of its cards are in each state."""
    from .db import action_cards, actions

    stmt = select(actions).order_by(actions.c.created_at.desc()).limit(limit)
    if action_id is not None:
        stmt = stmt.where(actions.c.id == action_id)
    rows = [dict(r) for r in conn.execute(stmt).mappings()]
    if not rows:
        return rows
    states: dict[str, dict[str, int]] = {}
    ids = None if limit is None and action_id is None else [r["id"] for r in rows]
    counts = select(action_cards.c.action_id, action_cards.c.state, func.count())
    if ids is not None:
        counts = counts.where(action_cards.c.action_id.in_(ids))
    for aid, state, n in conn.execute(
            counts
            .group_by(action_cards.c.action_id, action_cards.c.state)):
        states.setdefault(aid, {})[state] = int(n)
    for r in rows:
        r["states"] = states.get(r["id"], {})
    return rows


def rejects_page(conn, status: str | None, offset: int, limit: int | None) -> tuple[int, list[dict]]:
    """(how many rejects are in ``status`` (None: in any), those of one page oldest first)."""
    where = [journal_rejects.c.status == status] if status else []
    total = conn.execute(select(func.count()).select_from(journal_rejects).where(*where)).scalar_one()
    rows = [dict(r) for r in conn.execute(
        select(journal_rejects).where(*where)
        .order_by(journal_rejects.c.id).offset(offset).limit(limit)).mappings()] if limit != 0 else []
    return int(total), rows
