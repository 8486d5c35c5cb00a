"""Reports ("Биллинг: Дисконтные карты - Остатки и обороты") and the ledger verification.

Balances and turnovers are read from the books, the entries: an entry takes effect at its operation's
time, except a move into a lot that had not started yet, which takes effect when the lot starts (the
nightly Accrual posts it then). So for any period and any card and measure,
opening + accrued - spent - expired - returned = closing holds by construction, and once the nightly
regulation has run for today the closing balance is what GetCardInfo answers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from sqlalchemy import BigInteger, and_, case, func, or_, select, type_coerce

from ..adapters.db import documents, entries, lots, operations
from ..domain import errors
from ..domain.ledger import day_bounds
from ..domain.model import DEFERRED_ROLES, Kind, Measure, Role, Source
from .unit_of_work import UnitOfWork

TURNOVERS = ("accrued", "spent", "expired", "returned")
ROLE_COLUMN = {
    Role.CREDIT.value: "accrued", Role.CREDIT_DEFERRED.value: "accrued",
    Role.SPEND.value: "spent",
    Role.EXPIRY.value: "expired", "zeroing": "expired",
    Role.REFUND.value: "returned", Role.TAKEBACK.value: "returned", Role.TAKEBACK_DEFERRED.value: "returned",
    Role.DEBT.value: "returned",
    Role.HOLD.value: "spent", Role.RELEASE.value: "spent",  # a hold and its release net to nothing
}


@dataclass
class Line:
    card: str
    measure: str
    opening: Decimal = Decimal("0.00")
    accrued: Decimal = Decimal("0.00")
    spent: Decimal = Decimal("0.00")
    expired: Decimal = Decimal("0.00")
    returned: Decimal = Decimal("0.00")
    closing: Decimal = Decimal("0.00")

    def balanced(self) -> bool:
        return self.opening + self.accrued + self.spent + self.expired + self.returned == self.closing


@dataclass
class BalancesReport:
    first: date
    last: date
    lines: list[Line] = field(default_factory=list)

    def totals(self) -> dict[str, Line]:
        out: dict[str, Line] = {}
        for line in self.lines:
            t = out.setdefault(line.measure, Line("TOTAL", line.measure))
            for name in ("opening", *TURNOVERS, "closing"):
                setattr(t, name, getattr(t, name) + getattr(line, name))
        return out


def _cents(v) -> Decimal:
    return Decimal(int(v or 0)).scaleb(-2).quantize(Decimal("0.01"))


class Reports:
    def __init__(self, billing):
        self.billing = billing
        self.tz = billing.settings.tz

    def balances(self, first: date, last: date, card: str | None = None) -> BalancesReport:
        """Per card and measure: opening at the start of ``first``, turnovers during first..last
        (inclusive, business days) signed as they move the balance, closing at the end of ``last``."""
        if first > last:
            raise errors.ValidationError(f"--from {first} is after --to {last}")
        start, end = day_bounds(first, last, self.tz)
        effective = case((entries.c.role.in_([r.value for r in DEFERRED_ROLES]), lots.c.available_from),
                         else_=operations.c.operation_time)
        raw = type_coerce(entries.c.amount, BigInteger)
        columns = [func.sum(case((effective < start, raw), else_=0)).label("opening"),
                   func.sum(case((effective < end, raw), else_=0)).label("closing")]
        for role, column in ROLE_COLUMN.items():
            columns.append(func.sum(case((and_(entries.c.role == role, effective >= start, effective < end), raw),
                                         else_=0)).label(f"{column}__{role}"))
        stmt = (select(entries.c.card_number, entries.c.measure, *columns)
                .select_from(entries.join(operations, operations.c.id == entries.c.operation_id)
                             .join(lots, lots.c.id == entries.c.lot_id))
                .where(entries.c.measure != Measure.CERTIFICATE.value)  # `report certificates` has them
                .group_by(entries.c.card_number, entries.c.measure)
                .order_by(entries.c.card_number, entries.c.measure))
        if card:
            stmt = stmt.where(entries.c.card_number == card)
        report = BalancesReport(first, last)
        with UnitOfWork(self.billing.engine) as uow:
            for row in uow.conn.execute(stmt).mappings():
                line = Line(row["card_number"], row["measure"], opening=_cents(row["opening"]),
                            closing=_cents(row["closing"]))
                for key, value in row.items():
                    if "__" in key:
                        column = key.split("__")[0]
                        setattr(line, column, getattr(line, column) + _cents(value))
                report.lines.append(line)
        return report

    def operations(self, card=None, kkm=None, kind=None, source=None, first: date | None = None,
                   last: date | None = None, limit: int | None = None):
        """The journal of operations with their signed moves per measure, oldest first."""
        raw = type_coerce(entries.c.amount, BigInteger)

        def net(measure: Measure):
            return func.coalesce(func.sum(case((entries.c.measure == measure.value, raw), else_=0)), 0)

        stmt = (select(operations.c.id, operations.c.operation_time, operations.c.card_number, operations.c.kind,
                       operations.c.source, operations.c.kkm, operations.c.receipt_number, operations.c.note,
                       operations.c.actor, net(Measure.BONUS).label("bonus"), net(Measure.ACCUMULATION).label("acc"),
                       net(Measure.RECEIPT_COUNT).label("cnt"))
                .select_from(operations.outerjoin(entries, entries.c.operation_id == operations.c.id))
                .group_by(operations.c.id, operations.c.operation_time, operations.c.card_number,
                          operations.c.kind, operations.c.source, operations.c.kkm, operations.c.receipt_number,
                          operations.c.note, operations.c.actor)
                .order_by(operations.c.operation_time, operations.c.id))
        if card:
            stmt = stmt.where(operations.c.card_number == card)
        if kkm:
            stmt = stmt.where(operations.c.kkm == kkm)
        if kind:
            stmt = stmt.where(operations.c.kind == kind)
        if source:
            stmt = stmt.where(operations.c.source == source)
        if first or last:
            start, end = day_bounds(first or date(1970, 1, 1), last or date(9998, 12, 31), self.tz)
            stmt = stmt.where(operations.c.operation_time >= start, operations.c.operation_time < end)
        if limit:
            stmt = stmt.limit(limit)
        with UnitOfWork(self.billing.engine) as uow:
            for r in uow.conn.execute(stmt):
                yield dict(id=r.id, time=r.operation_time.astimezone(self.tz), card=r.card_number, kind=r.kind,
                           source=r.source, kkm=r.kkm or "", receipt=r.receipt_number or "", bonus=_cents(r.bonus),
                           accumulation=_cents(r.acc), receipt_count=int(r.cnt) // 100, note=r.note or "",
                           actor=r.actor or "")

    # -- verification --------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Recompute the books; every difference found, as a line. Empty: the ledger is consistent."""
        problems = []
        with UnitOfWork(self.billing.engine, snapshot=True) as uow:  # one snapshot, whatever commits meanwhile
            for lot_id, remaining, total in uow.repo.lot_drift():
                problems.append(f"lot {lot_id}: remaining {remaining}, its entries sum to {total}")
            negative = uow.conn.execute(select(lots.c.id, lots.c.card_number, lots.c.remaining).where(
                lots.c.remaining < 0, (lots.c.expires_at.is_not(None)) | (lots.c.available_from.is_not(None))))
            for lot_id, number, remaining in negative:
                problems.append(f"lot {lot_id} of card {number}: a dated lot is negative ({remaining})")
            overspent = uow.conn.execute(select(lots.c.id, lots.c.card_number, lots.c.remaining).where(
                lots.c.remaining < 0, lots.c.measure == Measure.BONUS.value,
                ~lots.c.id.in_(select(entries.c.lot_id).where(entries.c.role == Role.DEBT.value))))
            for lot_id, number, remaining in overspent:
                problems.append(f"lot {lot_id} of card {number}: negative ({remaining}) without a debt entry")
            # every Sale/Return moved exactly what it reported
            moved = {}
            for op_id, measure, role, amount in uow.conn.execute(
                    select(entries.c.operation_id, entries.c.measure, entries.c.role, func.sum(entries.c.amount))
                    .join(operations, operations.c.id == entries.c.operation_id)
                    .where(operations.c.kind.in_([Kind.SALE.value, Kind.RETURN.value]),
                           entries.c.role != Role.EXPIRY.value)
                    .group_by(entries.c.operation_id, entries.c.measure, entries.c.role)):
                moved[(op_id, measure)] = moved.get((op_id, measure), Decimal("0.00")) + amount
            for op in uow.conn.execute(select(operations).where(
                    operations.c.kind.in_([Kind.SALE.value, Kind.RETURN.value]))).mappings():
                sign = 1 if op["kind"] == Kind.SALE.value else -1
                expected = {
                    "bonus": sign * (op["bonus_accrued"] - op["bonus_spent"]),
                    "accumulation": op["accumulation_delta"],
                    "receipt_count": Decimal(op["receipt_count_delta"]),
                }
                for measure, want in expected.items():
                    got = moved.get((op["id"], measure), Decimal("0.00"))
                    if got != want:
                        problems.append(f"operation {op['id']} ({op['kind']}, card {op['card_number']}): "
                                        f"{measure} moved {got}, reported {want}")
            problems.extend(_misbooked(uow.conn))
            # gift certificates: their state agrees with their account, each operation moved its Amount
            from ..adapters.certificate_repo import CertificateRepository

            problems.extend(CertificateRepository(uow.conn).verify(self.billing.clock()))
        return problems


def _misbooked(conn) -> list[str]:
    """Entries of one operation booked under another: an entry of another card than its operation's; a
    burn (Expiry entry) under an operation that is neither a nightly Expiry line nor burning, at once, what
    it moved into that lot itself; a nightly document's line of the wrong kind or card, or a nightly line
    outside any document."""
    problems = []
    for e_id, op_id, kind, e_card, op_card in conn.execute(
            select(entries.c.id, operations.c.id, operations.c.kind, entries.c.card_number, operations.c.card_number)
            .join(operations, operations.c.id == entries.c.operation_id)
            .where(entries.c.card_number != operations.c.card_number)):
        problems.append(f"entry {e_id} of card {e_card} is booked under operation {op_id} ({kind}) of card {op_card}")
    own = entries.alias("own")
    moved_in = (select(own.c.id).where(own.c.operation_id == entries.c.operation_id, own.c.lot_id == entries.c.lot_id,
                                       own.c.amount > 0, own.c.role != Role.EXPIRY.value).exists())
    nightly_line = and_(operations.c.kind == Kind.EXPIRY.value, operations.c.source == Source.NIGHTLY.value,
                        operations.c.document_id.is_not(None))
    # burnt at once: the operation moved the amount into a lot that had burnt when it was applied
    at_once = and_(moved_in, lots.c.expires_at <= operations.c.created_at)
    for e_id, op_id, kind, amount in conn.execute(
            select(entries.c.id, operations.c.id, operations.c.kind, entries.c.amount)
            .select_from(entries.join(operations, operations.c.id == entries.c.operation_id)
                         .join(lots, lots.c.id == entries.c.lot_id))
            .where(entries.c.role == Role.EXPIRY.value, ~nightly_line, ~at_once)):
        problems.append(f"entry {e_id} burns {amount} under operation {op_id} ({kind}), which is not an expiry line")
    expected = case((documents.c.kind == "WriteOff", Kind.EXPIRY.value), else_=Kind.ACCRUAL.value)
    for op_id, kind, doc_id, doc_kind in conn.execute(
            select(operations.c.id, operations.c.kind, documents.c.id, documents.c.kind)
            .join(documents, documents.c.id == operations.c.document_id)
            .where(or_(operations.c.kind != expected, operations.c.source != Source.NIGHTLY.value))):
        problems.append(f"operation {op_id} ({kind}) is a line of the {doc_kind} document {doc_id}")
    for op_id, kind in conn.execute(
            select(operations.c.id, operations.c.kind)
            .select_from(operations.outerjoin(documents, documents.c.id == operations.c.document_id))
            .where(operations.c.source == Source.NIGHTLY.value, documents.c.id.is_(None))):
        problems.append(f"nightly operation {op_id} ({kind}) belongs to no document")
    return problems


OPERATIONS_HEADER = ["time", "card", "kind", "source", "kkm", "receipt", "bonus", "accumulation", "receipt_count",
                     "operation_id", "note", "actor"]


def operation_cells(r: dict) -> list:
    """A row of `report operations --csv` (the console's CSV of the journal is the same file)."""
    return [r["time"].isoformat(timespec="seconds"), r["card"], r["kind"], r["source"], r["kkm"], r["receipt"],
            r["bonus"], r["accumulation"], r["receipt_count"], r["id"], r["note"], r["actor"]]
