"""What the web console reads: a card's page, the dashboard, the balances report as CSV rows.

Reads only. The console's commands call the same use cases as the CLI and SOAP (BillingService,
Actions, JournalImport, Operators); nothing here decides a business rule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from ..adapters import console_queries as q
from ..adapters.certificate_repo import CertificateRepository
from ..domain import errors
from ..domain.ledger import CardLedger, day_bounds
from ..domain.model import ZERO, CardView, Kind, Measure, normalise_phone
from ..domain.rules import day_start
from .reports import ROLE_COLUMN, TURNOVERS
from .unit_of_work import UnitOfWork

PAGE_SIZE = 50
MAX_DASHBOARD_DAYS = 366


@dataclass(frozen=True)
class ExpiryLine:
    day: date          # the last day the amount can be spent (business zone)
    amount: Decimal


@dataclass
class CardPage:
    card: CardView
    phone: str | None
    expiry: list[ExpiryLine]
    history: list[dict]
    page: int
    pages: int
    operations: int


@dataclass
class DayLine:
    day: date
    accrued: Decimal = ZERO
    spent: Decimal = ZERO
    expired: Decimal = ZERO
    returned: Decimal = ZERO


@dataclass
class Dashboard:
    first: date
    last: date
    days: list[DayLine] = field(default_factory=list)
    liability: Decimal = ZERO
    liability_pending: Decimal = ZERO
    certificate_liability: Decimal = ZERO  # what live gift certificates are worth now (`report certificates`)
    cards: dict = field(default_factory=dict)
    documents: list = field(default_factory=list)
    pending_rejects: int = 0

    def totals(self) -> DayLine:
        t = DayLine(self.last)
        for d in self.days:
            for name in TURNOVERS:
                setattr(t, name, getattr(t, name) + getattr(d, name))
        return t


def find_card(billing, text: str) -> str:
    """The number of the card a search means: a card number as it is, else a phone normalised as
    FindCardByPhone does (an active card first). CardNotFound / AmbiguousPhone otherwise."""
    text = (text or "").strip()
    if not text:
        raise errors.ValidationError("введите номер карты или телефон")
    try:
        return billing.card_info(text).number
    except errors.CardNotFound:
        pass
    except errors.ValidationError:  # too long for a card number: maybe still a phone
        pass
    try:
        normalise_phone(text)
    except errors.ValidationError:
        raise errors.CardNotFound(f"card {text} not found") from None
    return billing.find_by_phone(text).number


def operation_card(billing, operation_id: str) -> str | None:
    """The card number of an operation (None when there is no such operation)."""
    from ..domain.model import canonical_guid

    try:
        operation_id = canonical_guid(operation_id)
    except errors.ValidationError:
        return None
    with UnitOfWork(billing.engine) as uow:
        row = uow.repo.get_operation(operation_id)
    return row["card_number"] if row is not None else None


def expiry_schedule(ledger: CardLedger, tz) -> list[ExpiryLine]:
    """What burns when: per last day of validity, the live and pending bonus that ends then."""
    days: dict[date, Decimal] = {}
    for lot in ledger.lots:
        if lot.measure is Measure.BONUS and lot.expires_at is not None and lot.remaining > 0 \
                and not lot.is_expired(ledger.now):
            last_day = (lot.expires_at - timedelta(microseconds=1)).astimezone(tz).date()
            days[last_day] = days.get(last_day, ZERO) + lot.remaining
    return [ExpiryLine(d, days[d]) for d in sorted(days)]


def card_page(billing, number: str, page: int = 1, per_page: int = PAGE_SIZE) -> CardPage:
    page = max(1, page)
    now = billing.clock()
    with UnitOfWork(billing.engine) as uow:
        row = uow.repo.get_card(number)
        if row is None:
            raise errors.CardNotFound(f"card {number} not found")
        ledger = CardLedger(uow.repo.load_lots(number), now)
        view = billing._view(uow.repo, row, now, ledger)
        total = q.history_count(uow.conn, number)
        pages = max(1, -(-total // per_page))
        page = min(page, pages)
        history = q.history_page(uow.conn, number, (page - 1) * per_page, per_page)
        annulled = q.annulled_sales(uow.conn, [h["id"] for h in history if h["kind"] == Kind.SALE.value])
    for h in history:
        h["annulled"] = h["id"] in annulled
        h["annullable"] = h["kind"] == Kind.SALE.value and not h["annulled"] and h["accrued"] > 0
    return CardPage(card=view, phone=row["phone"], expiry=expiry_schedule(ledger, billing.settings.tz),
                    history=history, page=page, pages=pages, operations=total)


def dashboard(billing, first: date, last: date) -> Dashboard:
    if first > last:
        raise errors.ValidationError(f"начало периода {first:%d.%m.%Y} позже конца {last:%d.%m.%Y}")
    if (last - first).days + 1 > MAX_DASHBOARD_DAYS:
        raise errors.ValidationError(f"период не длиннее {MAX_DASHBOARD_DAYS} дней")
    tz = billing.settings.tz
    n = (last - first).days + 1
    bounds = [day_start(first + timedelta(days=i), tz) for i in range(n)] + [day_bounds(last, last, tz)[1]]
    now = billing.clock()
    out = Dashboard(first, last, [DayLine(first + timedelta(days=i)) for i in range(n)])
    with UnitOfWork(billing.engine) as uow:
        for (i, column), amount in q.bonus_turnovers_by_day(uow.conn, bounds, ROLE_COLUMN).items():
            if 0 <= i < n:
                setattr(out.days[i], column, getattr(out.days[i], column) + amount)
        out.liability, out.liability_pending = q.bonus_liability(uow.conn, now)
        out.certificate_liability = CertificateRepository(uow.conn).live_liability(now)
        out.cards = q.card_counts(uow.conn, bounds[0])
        out.documents = q.last_documents(uow.conn)
        out.pending_rejects = q.pending_rejects(uow.conn)
    return out


BALANCES_HEADER = ["card", "measure", "opening", *TURNOVERS, "closing"]


def balances_rows(report) -> list[list]:
    """The rows of the balances report as `kkmtransfer report balances --csv` writes them: a line per card
    and measure, then a TOTAL line per measure."""
    def cells(line):
        return [line.card, line.measure, line.opening, *(getattr(line, t) for t in TURNOVERS), line.closing]

    return [cells(line) for line in report.lines] + [cells(t) for t in report.totals().values()]


# -- bonus actions -------------------------------------------------------------------------------
def action_progress(row: dict) -> dict:
    """How far an action is: cards handled of its cards, in per cent, for its state."""
    states = row.get("states", {})
    total = row["cards"] or sum(states.values())
    if row["status"] in ("cancelling", "cancelled"):
        handled = states.get("cancelled", 0) + states.get("skipped", 0)
    else:
        handled = total - states.get("pending", 0)
    return dict(total=total, handled=handled, percent=(100 * handled // total) if total else 100)


def actions_list(billing, limit: int | None = 200) -> list[dict]:
    with UnitOfWork(billing.engine) as uow:
        rows = q.actions_with_progress(uow.conn, limit)
    for r in rows:
        r["progress"] = action_progress(r)
    return rows


def action(billing, action_id: str) -> dict | None:
    with UnitOfWork(billing.engine) as uow:
        rows = q.actions_with_progress(uow.conn, 1, action_id)
    if not rows:
        return None
    rows[0]["progress"] = action_progress(rows[0])
    return rows[0]


# -- journal rejects -------------------------------------------------------------------------------
REJECTS_PER_PAGE = 100


def rejects(billing, page: int = 1, status: str = "pending") -> tuple[list[dict], int, int, int]:
    """(rows, total, page, pages) of the journal rejects in ``status``, oldest first."""
    with UnitOfWork(billing.engine) as uow:
        total, _ = q.rejects_page(uow.conn, status, 0, 0)
        pages = max(1, -(-total // REJECTS_PER_PAGE))
        page = min(max(1, page), pages)
        _, rows = q.rejects_page(uow.conn, status, (page - 1) * REJECTS_PER_PAGE, REJECTS_PER_PAGE)
    return rows, total, page, pages


# -- CSV rows (machine-readable numbers, ISO times: the way the CLI's --csv files are written) ------------
def _iso(value) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else (
        value.isoformat() if value is not None else "")


HISTORY_HEADER = ["time", "operation_id", "kind", "source", "kkm", "store", "receipt", "receipt_sum", "bonus",
                  "accumulation", "receipt_count", "original_operation_id", "note", "annulled"]


def card_history_rows(billing, number: str) -> list[list]:
    """A card's whole history, newest first, as CSV rows (the figures of the card's page)."""
    tz = billing.settings.tz
    with UnitOfWork(billing.engine) as uow:
        if uow.repo.get_card(number) is None:
            raise errors.CardNotFound(f"card {number} not found")
        total = q.history_count(uow.conn, number)
        history = q.history_page(uow.conn, number, 0, max(total, 1))
        annulled = q.annulled_sales(uow.conn, [h["id"] for h in history if h["kind"] == Kind.SALE.value])
    return [[_iso(h["time"].astimezone(tz)), h["id"], h["kind"], h["source"], h["kkm"] or "", h["store"] or "",
             h["receipt_number"] or "", h["receipt_sum"] if h["receipt_sum"] is not None else "", h["bonus"],
             h["accumulation"], h["receipt_count"], h["original_operation_id"] or "", h["note"] or "",
             "yes" if h["id"] in annulled else ""] for h in history]


ACTIONS_HEADER = ["action_id", "created_at", "kind", "amount", "until", "inactive_since", "status", "cards",
                  "handled", "note"]


def actions_rows(billing) -> list[list]:
    return [[a["id"], _iso(a["created_at"]), a["kind"], a["amount"] if a["amount"] is not None else "",
             _iso(a["until_date"]), _iso(a["inactive_since"]), a["status"], a["progress"]["total"],
             a["progress"]["handled"], a["note"] or ""] for a in actions_list(billing, limit=None)]


REJECTS_HEADER = ["id", "status", "file", "line", "fault_code", "reason", "attempts", "created_at", "updated_at",
                  "row", "note"]


def rejects_rows(billing, status: str | None = "pending") -> list[list]:
    with UnitOfWork(billing.engine) as uow:
        _, rows = q.rejects_page(uow.conn, status, 0, None)
    return [[r["id"], r["status"], r["file_name"], r["line_no"], r["fault_code"], r["reason"], r["attempts"],
             _iso(r["created_at"]), _iso(r["updated_at"]), r["raw_row"], r["note"] or ""] for r in rows]
