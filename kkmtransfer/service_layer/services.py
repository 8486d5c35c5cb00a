"""The use cases of the billing server. Each runs in one unit of work (one transaction)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Callable

from sqlalchemy.exc import IntegrityError, OperationalError

from ..adapters.repository import Repository
from ..config import Settings
from ..domain import errors
from ..domain.ledger import CardLedger, day_bounds
from ..domain.model import (
    ApplyResult,
    CardStatus,
    CardView,
    Kind,
    Measure,
    OperationRequest,
    OperationView,
    Source,
    normalise_phone,
    required_text,
)
from . import passwords
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

APPLIED = "Applied"
ALREADY_APPLIED = "AlreadyApplied"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class CardRange:
    created: list[str]
    skipped: list[str]


class BillingService:
    def __init__(self, engine, settings: Settings, clock: Callable[[], datetime] = utcnow):
        self.engine = engine
        self.settings = settings
        self.clock = clock

    # -- reading -----------------------------------------------------------------------------
    def _view(self, repo: Repository, card_row, now: datetime, ledger: CardLedger | None = None) -> CardView:
        ledger = ledger or CardLedger(repo.load_lots(card_row["number"]), now)
        return CardView(number=card_row["number"], status=CardStatus(card_row["status"]),
                        holder=card_row["holder"], balances=ledger.balances(self.settings.tz))

    def card_info(self, number: str) -> CardView:
        number = required_text(number, "CardNumber", 32)
        with UnitOfWork(self.engine) as uow:
            card = uow.repo.get_card(number)
            if card is None:
                raise errors.CardNotFound(f"card {number} not found")
            return self._view(uow.repo, card, self.clock())

    def find_by_phone(self, phone: str) -> CardView:
        digits = normalise_phone(phone)
        with UnitOfWork(self.engine) as uow:
            found = uow.repo.cards_by_phone(digits)
            active = [c for c in found if c["status"] == CardStatus.ACTIVE.value]
            pool = active or found
            if not pool:
                raise errors.CardNotFound(f"no card with phone {digits}")
            if len(pool) > 1:
                raise errors.AmbiguousPhone(f"{len(pool)} cards have phone {digits}; ask for the card number")
            return self._view(uow.repo, pool[0], self.clock())

    def card_operations(self, number: str, date_from: date, date_to: date) -> list[OperationView]:
        number = required_text(number, "CardNumber", 32)
        if date_from is None or date_to is None:
            raise errors.ValidationError("DateFrom and DateTo are required")
        if date_from > date_to:
            raise errors.ValidationError(f"DateFrom {date_from} is after DateTo {date_to}")
        start, end = day_bounds(date_from, date_to, self.settings.tz)
        with UnitOfWork(self.engine) as uow:
            if uow.repo.get_card(number) is None:
                raise errors.CardNotFound(f"card {number} not found")
            return uow.repo.card_operations(number, start, end)

    # -- registering a receipt ---------------------------------------------------------------
    def register_operation(self, request: OperationRequest, source: Source = Source.ONLINE) -> ApplyResult:
        """Apply a Sale or a Return exactly once. Retries once when a concurrent writer inserted the
        same OperationId first (then the answer is AlreadyApplied or OperationConflict)."""
        for attempt in (1, 2):
            try:
                return self._register(request, source)
            except IntegrityError:
                if attempt == 2:
                    raise
                log.info("operation %s: lost an insert race, re-reading", request.operation_id)
            except OperationalError as exc:  # PostgreSQL deadlock / serialization: retry once
                if attempt == 2 or "deadlock" not in str(exc).lower():
                    raise
        raise AssertionError("unreachable")

    def _already(self, repo: Repository, existing, request: OperationRequest, now) -> ApplyResult:
        if existing["content_hash"] != request.content_hash():
            raise errors.OperationConflict(
                f"OperationId {request.operation_id} was already applied with different contents")
        card = repo.get_card(existing["card_number"])
        return ApplyResult(request.operation_id, ALREADY_APPLIED, self._view(repo, card, now))

    def _register(self, request: OperationRequest, source: Source) -> ApplyResult:
        now = self.clock()
        with UnitOfWork(self.engine, write=True) as uow:
            repo = uow.repo
            existing = repo.get_operation(request.operation_id)
            if existing is not None:
                return self._already(repo, existing, request, now)
            card = repo.get_card(request.card_number, lock=True)
            if card is None:
                raise errors.CardNotFound(f"card {request.card_number} not found")
            existing = repo.get_operation(request.operation_id)  # again, now that the card is ours
            if existing is not None:
                return self._already(repo, existing, request, now)
            if card["status"] != CardStatus.ACTIVE.value:
                raise errors.CardBlocked(f"card {request.card_number} is blocked")

            if request.kind is Kind.SALE:
                ledger = CardLedger(repo.load_lots(card["number"]), now)
                ledger.spend(request.bonus_spent)
                ledger.credit(Measure.BONUS, request.bonus_accrued)
                self._apply_delta(ledger, Measure.ACCUMULATION, request.accumulation_delta)
                self._apply_delta(ledger, Measure.RECEIPT_COUNT, Decimal(request.receipt_count_delta))
            else:
                ledger = self._plan_return(repo, card, request, now)

            repo.insert_operation(
                id=request.operation_id, card_number=card["number"], kind=request.kind.value,
                source=source.value, kkm=request.kkm, store=request.store,
                receipt_number=request.receipt_number, operation_time=request.operation_time,
                business_date=request.operation_time.astimezone(self.settings.tz).date(),
                content_hash=request.content_hash(), receipt_sum=request.receipt_sum,
                bonus_accrued=request.bonus_accrued, bonus_spent=request.bonus_spent,
                accumulation_delta=request.accumulation_delta,
                receipt_count_delta=request.receipt_count_delta, promotion_code=request.promotion_code,
                original_operation_id=request.original_operation_id, created_at=now,
            )
            repo.save_moves(card["number"], request.operation_id, ledger.moves, now)
            view = self._view(repo, card, now, ledger)
            uow.commit()
        return ApplyResult(request.operation_id, APPLIED, view)

    @staticmethod
    def _apply_delta(ledger: CardLedger, measure: Measure, delta: Decimal, preferred=()) -> None:
        if delta > 0:
            ledger.credit(measure, delta)
        elif delta < 0:
            ledger.take_back(measure, -delta, preferred)

    def _plan_return(self, repo: Repository, card, request: OperationRequest, now) -> CardLedger:
        sale = repo.get_operation(request.original_operation_id)
        if sale is None or sale["kind"] != Kind.SALE.value:
            raise errors.OriginalNotFound(f"no sale with OperationId {request.original_operation_id}")
        if sale["card_number"] != card["number"]:
            raise errors.ValidationError(
                f"sale {request.original_operation_id} was made with another card, not {card['number']}")
        done = repo.return_totals(sale["id"])
        for name, label in (("receipt_sum", "ReceiptSum"), ("bonus_spent", "BonusSpent"),
                            ("bonus_accrued", "BonusAccrued")):
            asked = getattr(request, name)
            left = sale[name] - done[name]
            if asked > left:
                raise errors.ReturnExceedsSale(
                    f"{label} {asked} exceeds what is left of the sale: {left} "
                    f"(sale {sale[name]}, returned earlier {done[name]})")

        sources = repo.spend_sources(sale["id"])
        credited = repo.credited_lots(sale["id"])
        ledger = CardLedger(repo.load_lots(card["number"], [lot_id for lot_id, _ in sources] + credited), now)
        by_id = {lot.id: lot for lot in ledger.lots}
        ledger.refund([(by_id[lot_id], amount) for lot_id, amount in sources], request.bonus_spent)
        preferred = [by_id[i] for i in credited]
        ledger.take_back(Measure.BONUS, request.bonus_accrued, preferred)
        self._apply_delta(ledger, Measure.ACCUMULATION, request.accumulation_delta, preferred)
        self._apply_delta(ledger, Measure.RECEIPT_COUNT, Decimal(request.receipt_count_delta), preferred)
        return ledger

    # -- back office: cards ------------------------------------------------------------------
    def add_card_range(self, first: int, last: int, prefix: str = "", width: int = 0,
                       holder: str | None = None) -> CardRange:
        if first < 0 or last < first:
            raise errors.ValidationError("--from must be >= 0 and --to must not be below --from")
        if last - first >= 1_000_000:
            raise errors.ValidationError("at most 1,000,000 cards at a time")
        numbers = [f"{prefix}{n:0{width}d}" for n in range(first, last + 1)]
        if any(len(n) > 32 for n in numbers):
            raise errors.ValidationError("card numbers are at most 32 characters")
        now = self.clock()
        with UnitOfWork(self.engine, write=True) as uow:
            existing = uow.repo.existing_card_numbers(numbers)
            new = [n for n in numbers if n not in existing]
            uow.repo.insert_cards([dict(number=n, status=CardStatus.ACTIVE.value, holder=holder, phone=None,
                                        created_at=now) for n in new])
            uow.commit()
        return CardRange(created=new, skipped=sorted(existing))

    def set_card_status(self, number: str, status: CardStatus) -> None:
        with UnitOfWork(self.engine, write=True) as uow:
            if not uow.repo.update_card(number, status=status.value):
                raise errors.CardNotFound(f"card {number} not found")
            uow.commit()

    def set_card_phone(self, number: str, phone: str | None) -> str | None:
        digits = normalise_phone(phone) if phone else None
        with UnitOfWork(self.engine, write=True) as uow:
            if not uow.repo.update_card(number, phone=digits):
                raise errors.CardNotFound(f"card {number} not found")
            uow.commit()
        return digits

    def set_card_holder(self, number: str, holder: str | None) -> None:
        with UnitOfWork(self.engine, write=True) as uow:
            if not uow.repo.update_card(number, holder=holder):
                raise errors.CardNotFound(f"card {number} not found")
            uow.commit()

    # -- back office: registers' users -------------------------------------------------------
    def add_user(self, name: str, password: str) -> bool:
        name = required_text(name, "user name", 64)
        if ":" in name:
            raise errors.ValidationError("a user name must not contain ':' (HTTP Basic cannot carry it)")
        if len(password) < 8:
            raise errors.ValidationError("a password must be at least 8 characters long")
        hashed = passwords.hash_password(password)
        with UnitOfWork(self.engine, write=True) as uow:
            created = uow.repo.upsert_user(name, hashed, self.clock())
            uow.commit()
        return created

    def disable_user(self, name: str) -> None:
        with UnitOfWork(self.engine, write=True) as uow:
            if not uow.repo.disable_user(name):
                raise errors.ValidationError(f"no user {name}")
            uow.commit()

    def list_users(self):
        with UnitOfWork(self.engine) as uow:
            return [dict(r) for r in uow.repo.list_users()]

    def authenticate(self, name: str, password: str) -> bool:
        with UnitOfWork(self.engine) as uow:
            user = uow.repo.get_user(name)
        if user is None or user["disabled"]:
            passwords.verify_password(name, password, passwords.DUMMY_HASH)  # same cost either way
            return False
        return passwords.verify_password(name, password, user["password_hash"])

    # -- verification ------------------------------------------------------------------------
    def lot_drift(self):
        with UnitOfWork(self.engine) as uow:
            return uow.repo.lot_drift()
