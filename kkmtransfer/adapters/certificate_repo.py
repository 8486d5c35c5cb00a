"""SQL of gift certificates: their attributes (``certificates``) and the report. Their money is read and
written through the ledger's own queries (``Repository``: lots, entries, operations)."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, Date, and_, bindparam, case, func, insert, select, text, type_coerce, update
from sqlalchemy.engine import Connection

from ..domain.certificates import ACCOUNT_STATUS, Certificate, CertKind, State, account_key
from ..domain.model import Measure, Role
from .db import Cents, UTCDateTime, cards, certificates, entries, lots, operations
from .repository import Repository, _cents

CHUNK = 5000


def _certificate(row) -> Certificate:
    return Certificate(number=row["number"], kind=CertKind(row["kind"]), nominal=row["nominal"],
                       state=State(row["state"]), blocked=row["blocked"], block_reason=row["block_reason"],
                       valid_days=row["valid_days"], valid_until=row["valid_until"], expires_at=row["expires_at"],
                       pin_hash=row["pin_hash"], pin_failures=row["pin_failures"],
                       sale_operation_id=row["sale_operation_id"])


class CertificateRepository(Repository):
    def __init__(self, conn: Connection):
        super().__init__(conn)

    # -- certificates ----------------------------------------------------------------------------
    def get_certificate(self, number: str, *, lock: bool = False) -> Certificate | None:
        stmt = select(certificates).where(certificates.c.number == number)
        if lock:
            stmt = stmt.with_for_update()
        row = self.conn.execute(stmt).mappings().first()
        return None if row is None else _certificate(row)

    def certificate_of_account(self, account: str) -> Certificate | None:
        row = self.conn.execute(select(certificates).where(certificates.c.account == account)).mappings().first()
        return None if row is None else _certificate(row)

    def insert_certificates(self, rows: list[dict], now: datetime) -> None:
        """The account rows and the certificates, in chunks (one multi-row INSERT each)."""
        for i in range(0, len(rows), CHUNK):
            chunk = rows[i:i + CHUNK]
            self.conn.execute(insert(cards), [
                dict(number=r["account"], status=ACCOUNT_STATUS, holder=None, phone=None, created_at=now,
                     accumulation_delay_days=0, accumulation_lifetime_days=None, count_delay_days=0,
                     count_lifetime_days=None) for r in chunk])
            self.conn.execute(insert(certificates), chunk)

    def numbers_between(self, first: str, last: str) -> set[str]:
        """Certificate numbers in the text range first..last (one query through the primary key)."""
        return set(self.conn.execute(select(certificates.c.number)
                                     .where(certificates.c.number.between(first, last))).scalars())

    def accounts_between(self, first: str, last: str) -> set[str]:
        """Rows of ``cards`` in the account key range of first..last that are not certificates' accounts."""
        return set(self.conn.execute(select(cards.c.number).where(
            cards.c.number.between(account_key(first), account_key(last)),
            cards.c.status != ACCOUNT_STATUS)).scalars())

    def insert_range(self, first: int, last: int, prefix: str, width: int, kind: str, nominal: Decimal,
                     valid_days: int | None, valid_until, now: datetime) -> None:
        """The account rows and the certificates PREFIX + N (N zero-padded to ``width``, never cut) for
        first <= N <= last that do not exist yet, by two INSERT ... SELECT over a number series made
        in the database (generate_series on PostgreSQL, a recursive CTE on SQLite)."""
        postgres = self.conn.dialect.name == "postgresql"
        if postgres:
            series = "WITH s(n) AS (SELECT generate_series(:first, :last))"
            fmt = "(CASE WHEN length(n::text) >= :w THEN n::text ELSE lpad(n::text, :w, '0') END)"
        else:
            series = "WITH RECURSIVE s(n) AS (SELECT :first UNION ALL SELECT n + 1 FROM s WHERE n < :last)"
            fmt = ("(CASE WHEN length(CAST(n AS TEXT)) >= :w THEN CAST(n AS TEXT) "
                   "ELSE substr(:zeros || CAST(n AS TEXT), -:w) END)")
        number = f"(:p || {fmt})"
        missing = f"NOT EXISTS (SELECT 1 FROM certificates c WHERE c.number = {number})"
        params = dict(first=first, last=last, w=width, zeros="0" * width, p=prefix, acc=account_key(""),
                      now=now, kind=kind, nominal=nominal, valid_days=valid_days, valid_until=valid_until,
                      status=ACCOUNT_STATUS, state=State.ISSUED.value, no=False)
        if postgres:
            del params["zeros"]
        types = [bindparam("now", type_=UTCDateTime()), bindparam("nominal", type_=Cents()),
                 bindparam("valid_until", type_=Date()), bindparam("no", type_=Boolean())]
        accounts = text(
            f"{series} INSERT INTO cards (number, status, created_at, accumulation_delay_days, count_delay_days) "
            f"SELECT :acc || {number}, :status, :now, 0, 0 FROM s WHERE {missing}")
        certs = text(
            f"{series} INSERT INTO certificates (number, account, kind, nominal, state, blocked, valid_days, "
            f"valid_until, pin_failures, created_at) SELECT {number}, :acc || {number}, :kind, :nominal, :state, "
            f":no, :valid_days, :valid_until, 0, :now FROM s WHERE {missing}")
        self.conn.execute(accounts.bindparams(*[t for t in types if t.key == "now"]),
                          {k: v for k, v in params.items() if k in ("first", "last", "w", "zeros", "p", "acc",
                                                                    "status", "now")})
        self.conn.execute(certs.bindparams(*types), {k: v for k, v in params.items() if k != "status"})

    def update_certificate(self, number: str, **values) -> int:
        return self.conn.execute(update(certificates).where(certificates.c.number == number)
                                 .values(**values)).rowcount

    def update_between(self, first: str, last: str, where=(), **values) -> int:
        """The certificates numbered first..last as operators mean it (service_layer.card_range)."""
        from ..service_layer.card_range import range_condition

        return self.conn.execute(update(certificates).where(range_condition(first, last, certificates.c.number),
                                                            *where).values(**values)).rowcount

    def count_between(self, first: str, last: str, where=()) -> int:
        from ..service_layer.card_range import range_condition

        return self.conn.execute(select(func.count()).select_from(certificates)
                                 .where(range_condition(first, last, certificates.c.number), *where)).scalar_one()

    def has_spend(self, lot_id: int) -> bool:
        return self.conn.execute(select(entries.c.id).where(entries.c.lot_id == lot_id,
                                                            entries.c.role == Role.SPEND.value).limit(1)).first() \
            is not None

    # -- report ----------------------------------------------------------------------------------
    def by_status(self, now: datetime) -> list[tuple[str, int, Decimal, Decimal]]:
        """(status now, count, nominal sum, balance sum) — the balance is what is live now."""
        live = (select(lots.c.card_number, func.sum(type_coerce(lots.c.remaining, BigInteger)).label("cents"))
                .where(lots.c.measure == Measure.CERTIFICATE.value, lots.c.remaining != 0,
                       (lots.c.expires_at.is_(None)) | (lots.c.expires_at > now))
                .group_by(lots.c.card_number).subquery())
        status = case((certificates.c.blocked, "Blocked"),
                      (and_(certificates.c.state == State.ACTIVE.value, certificates.c.expires_at.is_not(None),
                            certificates.c.expires_at <= now), State.EXPIRED.value),
                      else_=certificates.c.state)
        rows = self.conn.execute(
            select(status.label("status"), func.count(), func.sum(type_coerce(certificates.c.nominal, BigInteger)),
                   func.coalesce(func.sum(live.c.cents), 0))
            .select_from(certificates.outerjoin(live, live.c.card_number == certificates.c.account))
            .group_by(status)).all()
        return [(r[0], r[1], _cents(r[2]), _cents(r[3])) for r in rows]

    def turnovers(self, start: datetime, end: datetime) -> dict[str, Decimal]:
        """Signed sums of the certificates' entries per role: before ``start`` (opening), in
        [start, end) per role, before ``end`` (closing); and the count of operations per kind."""
        raw = type_coerce(entries.c.amount, BigInteger)
        t = operations.c.operation_time
        cols = [func.coalesce(func.sum(case((t < start, raw), else_=0)), 0).label("opening"),
                func.coalesce(func.sum(case((t < end, raw), else_=0)), 0).label("closing")]
        for role in (Role.CREDIT, Role.TAKEBACK, Role.SPEND, Role.FORFEIT, Role.REFUND, Role.EXPIRY):
            cols.append(func.coalesce(func.sum(case((and_(entries.c.role == role.value, t >= start, t < end), raw),
                                                    else_=0)), 0).label(role.value))
        row = self.conn.execute(
            select(*cols).select_from(entries.join(operations, operations.c.id == entries.c.operation_id))
            .where(entries.c.measure == Measure.CERTIFICATE.value)).mappings().one()
        return {k: _cents(v) for k, v in row.items()}

    def operation_counts(self, start: datetime, end: datetime) -> dict[str, int]:
        return dict(self.conn.execute(
            select(operations.c.kind, func.count()).where(operations.c.kind.like("Certificate%"),
                                                          operations.c.operation_time >= start,
                                                          operations.c.operation_time < end)
            .group_by(operations.c.kind)).all())

    def live_liability(self, now: datetime) -> Decimal:
        return _cents(self.conn.execute(
            select(func.coalesce(func.sum(type_coerce(lots.c.remaining, BigInteger)), 0))
            .where(lots.c.measure == Measure.CERTIFICATE.value, lots.c.remaining != 0,
                   (lots.c.expires_at.is_(None)) | (lots.c.expires_at > now))).scalar_one())

    # -- verification ------------------------------------------------------------------------------
    def verify(self, now: datetime) -> list[str]:
        """Certificates whose state disagrees with their ledger account."""
        problems = []
        balance = (select(lots.c.card_number, func.sum(type_coerce(lots.c.remaining, BigInteger)).label("cents"),
                          func.min(type_coerce(lots.c.remaining, BigInteger)).label("low"))
                   .where(lots.c.measure == Measure.CERTIFICATE.value).group_by(lots.c.card_number).subquery())
        rows = self.conn.execute(
            select(certificates.c.number, certificates.c.state, certificates.c.nominal, certificates.c.expires_at,
                   func.coalesce(balance.c.cents, 0).label("cents"), func.coalesce(balance.c.low, 0).label("low"))
            .select_from(certificates.outerjoin(balance, balance.c.card_number == certificates.c.account))).all()
        for r in rows:
            held, low = _cents(r.cents), _cents(r.low)
            if low < 0:
                problems.append(f"certificate {r.number}: a lot is negative ({low})")
            if held > r.nominal:
                problems.append(f"certificate {r.number}: holds {held}, more than its nominal {r.nominal}")
            if r.state == State.ISSUED.value and held != 0:
                problems.append(f"certificate {r.number}: Issued (not sold) but holds {held}")
            if r.state == State.REDEEMED.value and held != 0:
                problems.append(f"certificate {r.number}: Redeemed but holds {held}")
        stray = self.conn.execute(
            select(lots.c.id, lots.c.card_number).where(
                lots.c.measure == Measure.CERTIFICATE.value,
                ~lots.c.card_number.in_(select(certificates.c.account)))).all()
        for lot_id, account in stray:
            problems.append(f"lot {lot_id}: certificate money on {account}, which is no certificate's account")
        # a certificate operation moved exactly its Amount (a single-use redemption also its forfeit)
        moved = select(entries.c.operation_id, func.sum(type_coerce(entries.c.amount, BigInteger)).label("cents")) \
            .where(entries.c.measure == Measure.CERTIFICATE.value,
                   entries.c.role.not_in([Role.FORFEIT.value, Role.EXPIRY.value])) \
            .group_by(entries.c.operation_id).subquery()
        sign = case((operations.c.kind.in_(["CertificateSell", "CertificateRefund"]), 1), else_=-1)
        for op_id, kind, amount, cents in self.conn.execute(
                select(operations.c.id, operations.c.kind, operations.c.receipt_sum,
                       func.coalesce(moved.c.cents, 0))
                .select_from(operations.outerjoin(moved, moved.c.operation_id == operations.c.id))
                .where(operations.c.kind.like("Certificate%"),
                       type_coerce(operations.c.receipt_sum, BigInteger) * sign != func.coalesce(moved.c.cents, 0))):
            problems.append(f"operation {op_id} ({kind}): moved {_cents(cents)}, its Amount is {amount}")
        return problems
