"""The use cases of the billing server. Each runs in one unit of work (one transaction)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable

from sqlalchemy.exc import IntegrityError, OperationalError

from ..adapters.pg_raw import card_summary, raw_summary_path
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
    Role,
    Source,
    ZERO,
    normalise_phone,
    optional_text,
    required_text,
)
from ..domain.certificates import ACCOUNT_PREFIX
from . import audit, holds, passwords, receipts
from .credentials import CredentialCache, Principal, principal_of
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

APPLIED = "Applied"
ALREADY_APPLIED = "AlreadyApplied"


_CARD_STATUS = {s.value: s for s in CardStatus}  # CardStatus(value) without the enum's lookup


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class CardRange:
    created: list[str]
    skipped: list[str]


def _describe(grace: timedelta) -> str:
    """30 days / 36 h / 90 min / 0 s, as an operator reads a configured grace."""
    seconds = int(grace.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _message(kind: str, accrued, spent, view: CardView | None, again: bool = False) -> str | None:
    """The cashier's line of a RegisterOperation answer (none without the card's balances: the journal)."""
    if view is None or accrued is None or spent is None:
        return None
    from .program import operation_message

    return operation_message(kind, accrued, spent, view, again)


_UNREAD = object()  # apply(): the hold this operation confirms is not looked up yet
# _apply_plain_sale(): enum members and counts as constants (an enum member's lookup is a descriptor call)
_SALE, _SALE_VALUE, _ACTIVE = Kind.SALE, Kind.SALE.value, CardStatus.ACTIVE.value
_BONUS, _ACCUMULATION, _RECEIPT_COUNT = Measure.BONUS, Measure.ACCUMULATION, Measure.RECEIPT_COUNT
_COUNTS = {n: Decimal(n) for n in (-1, 0, 1)}
HISTORY_MAX_RECORDS = 1000  # GetCardOperations: the default and the upper limit of MaxRecords
MIN_PASSWORD_LENGTH = 12


class BillingService:
    def __init__(self, engine, settings: Settings, clock: Callable[[], datetime] = utcnow):
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self._spend_codes = None
        # the installation's namespace of server ids (adapters/server_ids), kept once a transaction that read
        # it has committed (the secret is then stored for good: it is made once and never changed)
        self.id_namespace = None
        # verified register logins, reused for KKMTRANSFER_AUTH_CACHE_TTL seconds (see credentials.py)
        self.credentials = CredentialCache(settings.auth_cache_ttl)

    @property
    def spend_codes(self):
        """SMS codes before spending (kkmtransfer.service_layer.spend_codes), made on first use."""
        if self._spend_codes is None:
            from .spend_codes import SpendCodeService

            self._spend_codes = SpendCodeService(self.engine, self.settings, self.clock)
        return self._spend_codes

    # -- reading -----------------------------------------------------------------------------
    def _view(self, repo: Repository, card_row, now: datetime, ledger: CardLedger | None = None) -> CardView:
        ledger = ledger or CardLedger(repo.load_lots(card_row["number"]), now)
        return CardView(number=card_row["number"], status=CardStatus(card_row["status"]),
                        holder=card_row["holder"], balances=ledger.balances(self.settings.tz))

    def card_info(self, number: str) -> CardView:
        number = required_text(number, "CardNumber", 32)
        if raw_summary_path(self.engine):  # PostgreSQL: the read alone, on a pooled connection in autocommit
            found = card_summary(self.engine, number)  # one statement: one snapshot, one round trip
            if found is None:
                raise errors.CardNotFound(f"card {number} not found")
            status, holder, lots = found
        else:
            with UnitOfWork(self.engine, single_statement=True) as uow:
                card, lots = uow.repo.card_with_lots(number)  # one statement: one snapshot, one round trip
            if card is None:
                raise errors.CardNotFound(f"card {number} not found")
            status, holder = card["status"], card["holder"]
        now = self.clock()
        return CardView(number, _CARD_STATUS.get(status) or CardStatus(status), holder,
                        CardLedger(lots, now).balances(self.settings.tz))

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

    def card_operations(self, number: str, date_from: date, date_to: date, limit: int | None = None,
                        after: str | None = None) -> list[OperationView]:
        """The card's history, oldest first: at most ``limit`` records (default and upper limit
        HISTORY_MAX_RECORDS), those after the operation ``after`` when given (paging)."""
        number = required_text(number, "CardNumber", 32)
        if date_from is None or date_to is None:
            raise errors.ValidationError("DateFrom and DateTo are required")
        if date_from > date_to:
            raise errors.ValidationError(f"DateFrom {date_from} is after DateTo {date_to}")
        if limit is None:
            limit = HISTORY_MAX_RECORDS
        if not 1 <= limit <= HISTORY_MAX_RECORDS:
            raise errors.ValidationError(f"MaxRecords: must be 1 … {HISTORY_MAX_RECORDS}, got {limit}")
        after = optional_text(after, "After", 64)
        try:
            start, end = day_bounds(date_from, date_to, self.settings.tz)
        except (OverflowError, ValueError) as exc:
            raise errors.ValidationError(f"DateFrom/DateTo: out of range ({date_from} … {date_to})") from exc
        with UnitOfWork(self.engine) as uow:
            if uow.repo.get_card(number) is None:
                raise errors.CardNotFound(f"card {number} not found")
            found = uow.repo.card_operations(number, start, end, limit, after)
            if found is None:
                raise errors.ValidationError(f"After: no operation {after} on card {number}")
            return found

    # -- registering a receipt ---------------------------------------------------------------
    def check_plausible_time(self, request: OperationRequest) -> None:
        """A register's OperationTime may be at most ``max_future_hours`` ahead of the server's clock."""
        now = self.clock()
        if request.operation_time > now + timedelta(hours=self.settings.max_future_hours):
            raise errors.ValidationError(
                f"OperationTime: at most {self.settings.max_future_hours} h ahead of the server's clock "
                f"({now.isoformat(timespec='seconds')}), got {request.operation_time.isoformat()}")

    def check_card_existed(self, card, operation_time: datetime) -> None:
        """A receipt's OperationTime may not be before the card existed: its ``created_at`` less the grace
        KKMTRANSFER_OPTIME_BEFORE_CARD_GRACE (cards are often loaded after they were handed out); off when
        the grace is None. Catches registers whose clock was reset (2000-01-01) or a year mistyped."""
        grace = self.settings.optime_before_card_grace
        if grace is None or card is None or card["created_at"] is None:
            return
        created = card["created_at"]
        if operation_time < created - grace:
            tz = self.settings.tz
            raise errors.ValidationError(
                f"OperationTime: {operation_time.isoformat()} is before card {card['number']} existed "
                f"(in the server since {created.astimezone(tz):%Y-%m-%d %H:%M %Z}, "
                f"{_describe(grace)} earlier accepted): check the register's clock")

    def register_operation(self, request: OperationRequest, source: Source = Source.ONLINE,
                           actor: str | None = None, *, spend_code: str | None = None,
                           principal: Principal | None = None) -> ApplyResult:
        """Apply a Sale or a Return exactly once. Retries once when a concurrent writer inserted the
        same OperationId first (then the answer is AlreadyApplied or OperationConflict). ``actor`` (the
        HTTP user) is stored with the operation; a user bound to KKM codes or a store may post only
        for those: ``principal`` (what ``authenticate`` answered for ``actor``) says which, otherwise the
        users row is read. ``spend_code``: the SMS code for a spend (KKMTRANSFER_SPEND_CODE)."""
        for attempt in (1, 2):
            try:
                return self._register(request, source, actor, spend_code, principal)
            except IntegrityError:
                if attempt == 2:
                    raise
                log.info("operation %s: lost an insert race, re-reading", request.operation_id)
            except OperationalError as exc:  # PostgreSQL deadlock / serialization: retry once
                if attempt == 2 or "deadlock" not in str(exc).lower():
                    raise
        raise AssertionError("unreachable")

    def _already(self, repo: Repository, existing, request: OperationRequest, now,
                 with_view: bool = True) -> ApplyResult:
        if existing["content_hash"] != request.content_hash():
            raise errors.OperationConflict(
                f"OperationId {request.operation_id} was already applied with different contents")
        view = self._view(repo, repo.get_card(existing["card_number"]), now) if with_view else None
        return ApplyResult(request.operation_id, ALREADY_APPLIED, view, existing["bonus_accrued"],
                           existing["bonus_spent"],
                           _message(existing["kind"], existing["bonus_accrued"], existing["bonus_spent"], view,
                                    again=True))

    def _register(self, request: OperationRequest, source: Source, actor: str | None = None,
                  spend_code: str | None = None, principal: Principal | None = None) -> ApplyResult:
        from .spend_codes import keep_rejection, keeping_rejections

        try:
            with UnitOfWork(self.engine, write=True, fold=True) as uow, keeping_rejections(uow):
                self.check_scope(uow.repo, actor, principal, request)
                result = self.apply(uow.repo, request, source, self.clock(), actor=actor, spend_code=spend_code)
                uow.commit()
        except errors.DomainError as exc:
            if (spend_code and source is Source.ONLINE and request.kind is Kind.SALE and request.bonus_spent > 0
                    and not keep_rejection(None, exc, dry=True)):
                # the spend was refused for another reason (e.g. InsufficientBonus): its code was not used up
                self.spend_codes.note_refused_spend(request, actor, exc)
            raise
        return result

    @staticmethod
    def check_scope(repo: Repository, actor: str | None, principal: Principal | None, request) -> None:
        """The scope check of ``actor``'s operation: from ``principal`` when the caller has it (the
        authenticated user of this request, see ``authenticate``), from the users row otherwise."""
        BillingService._check_scope(principal_of(repo, actor, principal), request)

    @staticmethod
    def _check_scope(user: Principal | None, request) -> None:
        """A user bound to KKM codes or a store posts only for them (unbound users: any)."""
        if user is None:
            return
        if user.kkms and request.kkm not in user.kkms:
            raise errors.ValidationError(
                f"KKM {request.kkm!r} is not one of the registers user {user.name} may post for "
                f"({', '.join(user.kkms)})")
        if user.store and request.store != user.store:
            raise errors.ValidationError(
                f"Store {request.store!r} is not the store user {user.name} may post for ({user.store})")

    def apply(self, repo: Repository, request: OperationRequest, source: Source, now: datetime,
              *, with_view: bool = True, actor: str | None = None, spend_code: str | None = None) -> ApplyResult:
        """Apply one operation inside the caller's transaction (the journal import applies many in
        one, each under a savepoint). ``with_view=False`` skips computing the card's balances."""
        if not with_view and hasattr(repo, "plain_card") and self._apply_plain_sale(repo, request, source, now, actor):
            return ApplyResult(request.operation_id, APPLIED, None, request.bonus_accrued, request.bonus_spent)
        # the card locked, its lots and whether the id was applied already, read under the lock: one round trip
        existing, card, lots = repo.lock_card_for(request.card_number, request.operation_id)
        if existing is not None:
            return self._already(repo, existing, request, now, with_view)
        if card is None:
            raise errors.CardNotFound(f"card {request.card_number} not found")
        if card["status"] != CardStatus.ACTIVE.value:
            raise errors.CardBlocked(f"card {request.card_number} is blocked")
        self.check_card_existed(card, request.operation_time)
        hold = _UNREAD
        if source is Source.ONLINE and request.kind is Kind.SALE and request.bonus_spent > 0:
            hold = holds.confirming(repo, request)  # a Sale with a hold's OperationId confirms it
        if hold is None:  # a spend that confirms no hold (a hold's confirmation: checked at ReserveBonus)
            # before any write: a rejected code's record is committed alone (see spend_codes.keep_rejection)
            self.spend_codes.check_spend(repo.conn, card, spend_code=spend_code, operation_id=request.operation_id,
                                         kkm=request.kkm, who=actor, now=now)

        tz = self.settings.tz
        day = request.operation_time.astimezone(tz).date()
        content_hash = request.content_hash()  # of what the register sent
        line_rows = []
        if request.lines and request.kind is Kind.RETURN:
            request, line_rows = receipts.return_with_lines(repo, request)
        promotion = self._promotion(repo, request, day)
        rules = repo.card_rules(card)
        if hold is _UNREAD:
            hold = holds.confirming(repo, request)  # a Sale with a hold's OperationId confirms it
        hold_moves = 0
        if request.kind is Kind.SALE:
            held = holds.held_lot_ids(repo, hold)
            ledger = CardLedger(repo.load_lots(card["number"], held) if held or lots is None else lots, now)
            if hold is not None:
                hold_moves = holds.confirm(repo, hold, request, ledger, now)
            if request.lines:
                request, line_rows = receipts.sale_with_lines(repo, request, ledger, tz)
            ledger.spend(request.bonus_spent)
            bonus_rule = promotion.rule if promotion else self.settings.rule("bonus")
            ledger.credit(Measure.BONUS, request.bonus_accrued, *bonus_rule.life(day, tz))
            preferred = ()
        else:
            ledger, preferred = self._plan_return(repo, card, request, now)
        self._apply_delta(ledger, Measure.ACCUMULATION, request.accumulation_delta,
                          rules.accumulation.life(day, tz), preferred)
        self._apply_delta(ledger, Measure.RECEIPT_COUNT, Decimal(request.receipt_count_delta),
                          rules.receipt_count.life(day, tz), preferred)

        operation = dict(
            id=request.operation_id, card_number=card["number"], kind=request.kind.value,
            source=source.value, kkm=request.kkm, store=request.store,
            receipt_number=request.receipt_number, operation_time=request.operation_time,
            business_date=day, content_hash=content_hash, receipt_sum=request.receipt_sum,
            bonus_accrued=self._taken_back(ledger) if request.kind is Kind.RETURN else request.bonus_accrued,
            bonus_spent=request.bonus_spent, accumulation_delta=request.accumulation_delta,
            receipt_count_delta=request.receipt_count_delta, promotion_code=request.promotion_code,
            original_operation_id=request.original_operation_id, created_at=now,
            **({"actor": actor[:255]} if actor else {}),
        )
        if hold is not None:
            repo.insert_operation(**operation)
            repo.save_moves(card["number"], hold["hold_operation_id"], ledger.moves[:hold_moves], now)
            holds.mark_confirmed(repo, hold, now)
            repo.save_moves(card["number"], request.operation_id, ledger.moves[hold_moves:], now)
        else:  # on PostgreSQL usually one statement (see Repository.insert_operation_with_moves)
            repo.insert_operation_with_moves(operation, ledger.moves, now)
        receipts.save_lines(repo, request.operation_id, line_rows)
        view = self._view(repo, card, now, ledger) if with_view else None
        accrued = self._taken_back(ledger) if request.kind is Kind.RETURN else request.bonus_accrued
        return ApplyResult(request.operation_id, APPLIED, view, accrued, request.bonus_spent,
                           _message(request.kind.value, accrued, request.bonus_spent, view))

    def _apply_plain_sale(self, repo, request: OperationRequest, source: Source, now: datetime,
                          actor: str | None = None) -> bool:
        """``apply`` of the common receipt of a bulk load, on a batch repository (the journal import):
        a Sale that spends nothing (it may accrue), with no promotion, no lines, whose OperationId is new
        and names no hold, on a card the batch holds with its lots. The same rules in the same order as
        ``apply`` (card status, the card's existence at the receipt's time, the business day, the bonus
        and card rules' life, ``CardLedger.credit`` and its debts, buckets and limits), without what
        such a row cannot need (hold, spend code, promotion, lines, the card's view). True when applied,
        False when the row is not such a row (nothing done: ``apply`` goes on); a refusal raises the
        DomainError ``apply`` would raise."""
        if (request.kind is not _SALE or request.bonus_spent or request.promotion_code is not None
                or request.lines):
            return False
        held = repo.plain_card(request.card_number, request.operation_id)
        if held is None:
            return False
        card, lots = held
        if card["status"] != _ACTIVE:
            return False  # apply() refuses it (CardBlocked)
        self.check_card_existed(card, request.operation_time)
        tz = self.settings.tz
        day = request.operation_time.astimezone(tz).date()
        content_hash = request.content_hash()
        rules = repo.card_rules(card)
        ledger = CardLedger(lots, now)
        ledger.credit(_BONUS, request.bonus_accrued, *self.settings.rule("bonus").life(day, tz))
        self._apply_delta(ledger, _ACCUMULATION, request.accumulation_delta, rules.accumulation.life(day, tz))
        count = request.receipt_count_delta
        self._apply_delta(ledger, _RECEIPT_COUNT, _COUNTS[count] if count in _COUNTS else Decimal(count),
                          rules.receipt_count.life(day, tz))
        number = card["number"]
        operation = dict(
            id=request.operation_id, card_number=number, kind=_SALE_VALUE,
            source=source.value, kkm=request.kkm, store=request.store,
            receipt_number=request.receipt_number, operation_time=request.operation_time,
            business_date=day, content_hash=content_hash, receipt_sum=request.receipt_sum,
            bonus_accrued=request.bonus_accrued, bonus_spent=request.bonus_spent,
            accumulation_delta=request.accumulation_delta, receipt_count_delta=count, promotion_code=None,
            original_operation_id=request.original_operation_id, created_at=now,
            **({"actor": actor[:255]} if actor else {}),
        )
        repo.insert_operation_with_moves(operation, ledger.moves, now)
        return True

    @staticmethod
    def _taken_back(ledger: CardLedger) -> Decimal:
        """The accrued bonus a return really took back (less than asked when the receipt's bonuses
        were annulled before)."""
        roles = (Role.TAKEBACK, Role.TAKEBACK_DEFERRED, Role.DEBT)
        return -sum((m.amount for m in ledger.moves if m.lot.measure is Measure.BONUS and m.role in roles), ZERO)

    @staticmethod
    def _promotion(repo: Repository, request: OperationRequest, day: date):
        """The promotion named by the operation (None when none is named). A sale must fall in its
        validity period; a return only needs it to exist (goods come back after a promotion ends)."""
        if not request.promotion_code:
            return None
        promotion = repo.get_promotion(request.promotion_code)
        if promotion is None:
            raise errors.ValidationError(f"unknown PromotionCode {request.promotion_code!r}")
        if request.kind is Kind.SALE:
            promotion.check_valid_on(day)
        return promotion

    @staticmethod
    def _apply_delta(ledger: CardLedger, measure: Measure, delta: Decimal, life, preferred=()) -> None:
        if delta > 0:
            ledger.credit(measure, delta, *life)
        elif delta < 0:
            ledger.take_back(measure, -delta, preferred)

    def _plan_return(self, repo: Repository, card, request: OperationRequest, now):
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
        # what an annulment of the receipt's bonuses already took back is not taken again
        left = sale["bonus_accrued"] - done["bonus_accrued"] - done["annulled"]
        ledger.take_back(Measure.BONUS, max(min(request.bonus_accrued, left), ZERO), preferred)
        return ledger, preferred

    # -- back office: annulling a receipt's bonuses --------------------------------------------
    def annul_receipt(self, sale_id: str, note: str | None = None) -> tuple[ApplyResult, Decimal]:
        """Take back the bonuses a sale accrued ("Аннулировать бонусы чека"), less what its returns
        took back already; may leave a debt. Once per sale: again, it answers AlreadyApplied."""
        from ..adapters.db import operations
        from ..adapters.server_ids import check_own, namespace, server_id
        from ..domain.model import canonical_guid

        sale_id = canonical_guid(sale_id)
        now = self.clock()
        with UnitOfWork(self.engine, write=True) as uow:
            repo = uow.repo
            sale = repo.get_operation(sale_id)
            if sale is None or sale["kind"] != Kind.SALE.value:
                raise errors.OriginalNotFound(f"no sale with OperationId {sale_id}")
            card = repo.get_card(sale["card_number"], lock=True)
            # the sale's annulment, whatever id it was written under (registers cannot write Annulments)
            existing = uow.conn.execute(
                operations.select().where(operations.c.original_operation_id == sale_id,
                                          operations.c.kind == Kind.ANNULMENT.value,
                                          operations.c.source == Source.BACKOFFICE.value)).mappings().first()
            if existing is not None:
                return (ApplyResult(existing["id"], ALREADY_APPLIED, self._view(repo, card, now)),
                        existing["bonus_accrued"])
            op_id = server_id(namespace(uow.conn), "annulment", sale_id)
            check_own(repo.get_operation(op_id), op_id, kind=Kind.ANNULMENT.value, original_operation_id=sale_id)
            done = repo.return_totals(sale_id)
            left = max(sale["bonus_accrued"] - done["bonus_accrued"], ZERO)
            credited = repo.credited_lots(sale_id)
            ledger = CardLedger(repo.load_lots(card["number"], credited), now)
            by_id = {lot.id: lot for lot in ledger.lots}
            ledger.take_back(Measure.BONUS, left, [by_id[i] for i in credited])
            repo.insert_operation(
                id=op_id, card_number=card["number"], kind=Kind.ANNULMENT.value, source=Source.BACKOFFICE.value,
                operation_time=now, business_date=now.astimezone(self.settings.tz).date(), content_hash=op_id,
                receipt_sum=ZERO, bonus_accrued=left, bonus_spent=ZERO, accumulation_delta=ZERO,
                receipt_count_delta=0, original_operation_id=sale_id,
                note=(note or f"bonuses of receipt {sale['receipt_number'] or sale_id} annulled")[:500],
                created_at=now)
            repo.save_moves(card["number"], op_id, ledger.moves, now)
            view = self._view(repo, card, now, ledger)
            uow.commit()
        return ApplyResult(op_id, APPLIED, view), left

    # -- back office: cards ------------------------------------------------------------------
    def add_card_range(self, first: int, last: int, prefix: str = "", width: int = 0,
                       holder: str | None = None, actor: str | None = None,
                       issued: datetime | None = None) -> CardRange:
        """Create the cards; ``issued``: since when they exist (handed out before they were loaded here;
        receipts from then on are accepted, see check_card_existed), default now."""
        if first < 0 or last < first:
            raise errors.ValidationError("--from must be >= 0 and --to must not be below --from")
        if last - first >= 1_000_000:
            raise errors.ValidationError("at most 1,000,000 cards at a time")
        numbers = [f"{prefix}{n:0{width}d}" for n in range(first, last + 1)]
        if prefix.startswith(ACCOUNT_PREFIX):
            raise errors.ValidationError(
                f"card numbers must not start with {ACCOUNT_PREFIX!r} (gift certificates' accounts)")
        if any(len(n) > 32 for n in numbers):
            raise errors.ValidationError("card numbers are at most 32 characters")
        now = self.clock()
        if issued is not None:
            if issued.tzinfo is None:
                raise errors.ValidationError("--issued: a time with an offset is required")
            if issued > now:
                raise errors.ValidationError(f"--issued {issued.isoformat()} is in the future")
        created_at = issued or now
        with UnitOfWork(self.engine, write=True) as uow:
            existing = uow.repo.existing_card_numbers(numbers)
            new = [n for n in numbers if n not in existing]
            st = self.settings
            uow.repo.insert_cards([dict(number=n, status=CardStatus.ACTIVE.value, holder=holder, phone=None,
                                        created_at=created_at,
                                        accumulation_delay_days=st.accumulation_delay_days,
                                        accumulation_lifetime_days=st.accumulation_lifetime_days,
                                        count_delay_days=st.count_delay_days,
                                        count_lifetime_days=st.count_lifetime_days) for n in new])
            if new:
                audit.record(uow.conn, actor, "cards.add-range", f"{new[0]}..{new[-1]}", created=len(new),
                             holder=holder, **({"issued": issued.isoformat()} if issued else {}))
            uow.commit()
        return CardRange(created=new, skipped=sorted(existing))

    def set_card_status(self, number: str, status: CardStatus, actor: str | None = None) -> None:
        with UnitOfWork(self.engine, write=True) as uow:
            if not uow.repo.update_card(number, status=status.value):
                raise errors.CardNotFound(f"card {number} not found")
            audit.record(uow.conn, actor, "cards.block" if status is CardStatus.BLOCKED else "cards.unblock",
                         number)
            uow.commit()

    def set_card_phone(self, number: str, phone: str | None, actor: str | None = None) -> str | None:
        digits = normalise_phone(phone) if phone else None
        with UnitOfWork(self.engine, write=True) as uow:
            if not uow.repo.update_card(number, phone=digits):
                raise errors.CardNotFound(f"card {number} not found")
            audit.record(uow.conn, actor, "cards.set-phone", number, phone=digits or "")
            uow.commit()
        return digits

    def set_card_holder(self, number: str, holder: str | None, actor: str | None = None) -> None:
        with UnitOfWork(self.engine, write=True) as uow:
            if not uow.repo.update_card(number, holder=holder):
                raise errors.CardNotFound(f"card {number} not found")
            audit.record(uow.conn, actor, "cards.set-holder", number, holder=holder or "")
            uow.commit()

    def set_card_rules(self, first: str, last: str | None = None, actor: str | None = None, *,
                       dry_run: bool = False, **rules) -> int:
        """Set accumulation/count life rules on one card or on the cards numbered first..last (numbers
        compare as numbers, see card_range). Only the rules given (not None) change; a lifetime of 0
        means "never burns". ``dry_run``: count the cards, change nothing."""
        from .card_range import check_range, range_condition
        allowed = {"accumulation_delay_days", "accumulation_lifetime_days", "count_delay_days",
                   "count_lifetime_days"}
        values = {k: v for k, v in rules.items() if v is not None}
        if not values or set(values) - allowed:
            raise errors.ValidationError("give at least one rule to set")
        for key, value in values.items():
            if value < 0:
                raise errors.ValidationError(f"{key.replace('_', '-')} must not be negative")
            if key.endswith("lifetime_days") and value == 0:
                values[key] = None
        if last is not None:
            check_range(first, last)
        with UnitOfWork(self.engine, write=True) as uow:
            if last is None:
                changed = uow.repo.update_card(first, **values)
                if not changed:
                    raise errors.CardNotFound(f"card {first} not found")
            else:
                changed = uow.repo.update_cards_where(range_condition(first, last), **values)
            if dry_run:
                return changed  # rolled back
            audit.record(uow.conn, actor, "cards.set-rule", first if last is None else f"{first}..{last}",
                         cards=changed, **values)
            uow.commit()
        return changed

    # -- back office: promotions ---------------------------------------------------------------
    def add_promotion(self, code: str, name: str, delay_days: int = 0, lifetime_days: int | None = None,
                      until: date | None = None, valid_from: date | None = None, valid_to: date | None = None,
                      actor: str | None = None):
        from ..domain.rules import LifeRule

        code = required_text(code, "promotion code", 64)
        name = required_text(name, "promotion name", 200)
        LifeRule(delay_days, lifetime_days, until)  # validates
        if until is not None and until < self.clock().astimezone(self.settings.tz).date():
            raise errors.ValidationError(f"--until {until} is in the past")
        if valid_from and valid_to and valid_to < valid_from:
            raise errors.ValidationError("the validity period ends before it starts")
        with UnitOfWork(self.engine, write=True) as uow:
            if uow.repo.get_promotion(code) is not None:
                raise errors.ValidationError(f"promotion {code} already exists")
            uow.repo.insert_promotion(code=code, name=name, delay_days=delay_days, lifetime_days=lifetime_days,
                                      until_date=until, valid_from=valid_from, valid_to=valid_to,
                                      created_at=self.clock())
            audit.record(uow.conn, actor, "promotions.add", code, name=name, delay_days=delay_days,
                         lifetime_days=lifetime_days, until=until, valid_from=valid_from, valid_to=valid_to)
            uow.commit()

    def list_promotions(self):
        with UnitOfWork(self.engine) as uow:
            return [dict(r) for r in uow.repo.promotion_rows()]

    def close_promotion(self, code: str, actor: str | None = None) -> date:
        """End a promotion's validity today (business day): sales from tomorrow on cannot name it."""
        today = self.clock().astimezone(self.settings.tz).date()
        with UnitOfWork(self.engine, write=True) as uow:
            promotion = uow.repo.get_promotion(code)
            if promotion is None:
                raise errors.ValidationError(f"unknown promotion {code}")
            end = min(promotion.valid_to, today) if promotion.valid_to else today
            uow.repo.update_promotion(code, valid_to=end, closed_at=self.clock())
            audit.record(uow.conn, actor, "promotions.close", code, last_day=end)
            uow.commit()
        return end

    # -- back office: registers' users -------------------------------------------------------
    def add_user(self, name: str, password: str, actor: str | None = None, *, kkms: list[str] | None = None,
                 store: str | None = None) -> bool:
        """Create a user or set its password; ``kkms``/``store`` bind it to those registers ([] or ''
        unbinds, None leaves the binding as it is)."""
        name = required_text(name, "user name", 64)
        if ":" in name:
            raise errors.ValidationError("a user name must not contain ':' (HTTP Basic cannot carry it)")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise errors.ValidationError(f"a password must be at least {MIN_PASSWORD_LENGTH} characters long")
        scope = {}
        if kkms is not None:
            kkms = [required_text(k.strip(), "KKM code", 64) for k in kkms if k.strip()]
            scope["kkms"] = ",".join(dict.fromkeys(kkms)) or None
        if store is not None:
            scope["store"] = store.strip()[:64] or None
        hashed = passwords.hash_password(password)
        with UnitOfWork(self.engine, write=True) as uow:
            created = uow.repo.upsert_user(name, hashed, self.clock())
            if scope:
                uow.repo.update_user(name, **scope)
            audit.record(uow.conn, actor, "users.add" if created else "users.password", name, **scope)
            uow.commit()
        self.credentials.forget(name)
        return created

    def disable_user(self, name: str, actor: str | None = None) -> None:
        with UnitOfWork(self.engine, write=True) as uow:
            if not uow.repo.disable_user(name):
                raise errors.ValidationError(f"no user {name}")
            audit.record(uow.conn, actor, "users.disable", name)
            uow.commit()
        self.credentials.forget(name)

    def list_users(self):
        with UnitOfWork(self.engine) as uow:
            return [dict(r) for r in uow.repo.list_users()]

    def authenticate(self, name: str, password: str) -> Principal | None:
        """The register user these credentials belong to, with its scope, or None. A success is reused
        for KKMTRANSFER_AUTH_CACHE_TTL seconds without the database (``self.credentials``); a failure
        never is."""
        cached = self.credentials.get(name, password)
        if cached is not None:
            return cached
        with UnitOfWork(self.engine, single_statement=True) as uow:
            user = uow.repo.get_user(name)
        if user is None or user["disabled"]:
            passwords.verify_password(name, password, passwords.DUMMY_HASH)  # same cost either way
            return None
        if not passwords.verify_password(name, password, user["password_hash"]):
            return None
        principal = Principal.from_row(user)
        self.credentials.put(name, password, principal)
        return principal

    # -- verification ------------------------------------------------------------------------
    def lot_drift(self):
        with UnitOfWork(self.engine) as uow:
            return uow.repo.lot_drift()
