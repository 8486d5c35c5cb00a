"""Use cases of gift certificates, each one transaction, on the one ledger.

A certificate operation is a row of ``operations`` (kind ``Certificate<Kind>``, its Amount in
``receipt_sum``) on the certificate's account, with entries on its lots: the same exactly-once rule
(OperationId + content hash), the same row lock before any change, the same atomicity as a card's
receipt. Only a wrong PIN writes something while failing: the count of failures (and the lock after
MAX_PIN_FAILURES in a row), committed before the fault is raised, with nothing else.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Callable

from sqlalchemy.exc import IntegrityError, OperationalError

from ..adapters.certificate_repo import CertificateRepository
from ..adapters.db import certificates
from ..domain import errors
from ..domain.certificates import (
    MAX_PIN_FAILURES,
    Certificate,
    CertificateLedger,
    CertificateNotFound,
    CertificateOperationRequest,
    CertificatePinInvalid,
    CertificateView,
    CertKind,
    CertOpKind,
    State,
    account_key,
    certificate_number,
    check_can_use,
    hash_pin,
    new_pin,
    numbers_of_range,
    verify_pin,
)
from ..domain.ledger import day_bounds
from ..domain.model import ZERO, Source, money
from ..domain.rules import LifeRule
from . import audit
from .services import ALREADY_APPLIED, APPLIED, BillingService
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

PIN_LOCK_REASON = "pin"
OPERATOR_REASON = "operator"


@dataclass(frozen=True)
class CertificateResult:
    operation_id: str
    status: str  # Applied / AlreadyApplied
    certificate: CertificateView


@dataclass(frozen=True)
class RangeResult:
    created: list[str]
    skipped: list[str]


@dataclass
class CertificateReport:
    first: date
    last: date
    by_status: list[tuple[str, int, Decimal, Decimal]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    opening: Decimal = ZERO
    sold: Decimal = ZERO
    returned: Decimal = ZERO      # sales taken back (ReturnSale)
    redeemed: Decimal = ZERO      # paid by certificates
    forfeited: Decimal = ZERO     # the rest of single-use certificates, lost when redeemed
    refunded: Decimal = ZERO
    expired: Decimal = ZERO
    closing: Decimal = ZERO       # the books at the end of the period
    liability: Decimal = ZERO     # what live certificates are worth now

    def balanced(self) -> bool:
        return (self.opening + self.sold - self.returned - self.redeemed - self.forfeited + self.refunded
                - self.expired == self.closing)


def _check_range(first: str, last: str) -> None:
    """NUMBER --to LAST: LAST not before NUMBER, digit strings compared as numbers (card_range)."""
    from .card_range import check_range

    try:
        check_range(first, last)
    except errors.ValidationError:
        raise errors.ValidationError(f"--to {last} is before the first number {first}") from None


class CertificateService:
    def __init__(self, billing):
        self.billing = billing
        self.engine = billing.engine
        self.settings = billing.settings
        self.clock = billing.clock

    # -- reading -------------------------------------------------------------------------------
    def _view(self, repo: CertificateRepository, cert: Certificate, now: datetime,
              ledger: CertificateLedger | None = None) -> CertificateView:
        if ledger is None:
            ledger = CertificateLedger(repo.load_lots(account_key(cert.number)), now)
        return CertificateView(number=cert.number, status=cert.status(now), kind=cert.kind, nominal=cert.nominal,
                               balance=ledger.balance(), valid_until=cert.valid_until)

    def show(self, number: str) -> tuple[CertificateView, Certificate]:
        """For the back office: no PIN asked."""
        number = certificate_number(number)
        with UnitOfWork(self.engine) as uow:
            repo = CertificateRepository(uow.conn)
            cert = repo.get_certificate(number)
            if cert is None:
                raise CertificateNotFound(f"certificate {number} not found")
            return self._view(repo, cert, self.clock()), cert

    def info(self, number: str, pin: str | None = None) -> CertificateView:
        """For a register: a sold certificate with a PIN shows its balance only with the right PIN (a
        wrong one counts towards the lock)."""
        number = certificate_number(number)
        now = self.clock()
        with UnitOfWork(self.engine, write=bool(pin)) as uow:
            repo = CertificateRepository(uow.conn)
            cert = repo.get_certificate(number, lock=bool(pin))
            if cert is None:
                raise CertificateNotFound(f"certificate {number} not found")
            if cert.pin_hash and cert.state is not State.ISSUED:
                if cert.blocked:
                    return CertificateView(cert.number, "Blocked", cert.kind, cert.nominal, ZERO, cert.valid_until)
                self._check_pin(uow, repo, cert, pin)
            view = self._view(repo, cert, now)
            uow.commit()
            return view

    def _check_pin(self, uow, repo: CertificateRepository, cert: Certificate, pin: str | None) -> None:
        """Wrong: count it (lock at the limit), commit just that, raise. Right: reset the count."""
        if not pin:  # not a guess: nothing counted
            raise CertificatePinInvalid(f"certificate {cert.number} has a PIN: Pin is required")
        if verify_pin(pin, cert.pin_hash):
            if cert.pin_failures:
                repo.update_certificate(cert.number, pin_failures=0)
            return
        failures = cert.pin_failures + 1
        values = dict(pin_failures=failures)
        if failures >= MAX_PIN_FAILURES:
            values.update(blocked=True, block_reason=PIN_LOCK_REASON)
        repo.update_certificate(cert.number, **values)
        uow.commit()
        if failures >= MAX_PIN_FAILURES:
            raise CertificatePinInvalid(f"wrong PIN for certificate {cert.number}: {failures} in a row, "
                                        "the certificate is now blocked until the back office unblocks it")
        raise CertificatePinInvalid(f"wrong PIN for certificate {cert.number} "
                                    f"({MAX_PIN_FAILURES - failures} attempt(s) left before it is blocked)")

    # -- registering ---------------------------------------------------------------------------
    def register(self, request: CertificateOperationRequest, source: Source = Source.ONLINE,
                 actor: str | None = None, principal=None) -> CertificateResult:
        """``actor``: the register user; one bound to KKM codes or a store posts only for them
        (``principal``: what authentication found for it, else the users row is read)."""
        for attempt in (1, 2):
            try:
                with UnitOfWork(self.engine, write=True) as uow:
                    BillingService.check_scope(uow.repo, actor, principal, request)
                    result = self.apply(uow, request, source, self.clock(), actor)
                    uow.commit()
                return result
            except IntegrityError:
                if attempt == 2:
                    raise
                log.info("certificate operation %s: lost an insert race, re-reading", request.operation_id)
            except OperationalError as exc:
                if attempt == 2 or "deadlock" not in str(exc).lower():
                    raise
        raise AssertionError("unreachable")

    def _already(self, repo, existing, request, now) -> CertificateResult:
        if existing["content_hash"] != request.content_hash():
            raise errors.OperationConflict(
                f"OperationId {request.operation_id} was already applied with different contents")
        cert = repo.certificate_of_account(existing["card_number"])
        return CertificateResult(request.operation_id, ALREADY_APPLIED, self._view(repo, cert, now))

    def apply(self, uow, request: CertificateOperationRequest, source: Source, now: datetime,
              actor: str | None = None) -> CertificateResult:
        repo = CertificateRepository(uow.conn)
        existing = repo.get_operation(request.operation_id)
        if existing is not None:
            return self._already(repo, existing, request, now)
        cert = repo.get_certificate(request.number, lock=True)
        if cert is None:
            raise CertificateNotFound(f"certificate {request.number} not found")
        existing = repo.get_operation(request.operation_id)  # again, now that the certificate is ours
        if existing is not None:
            return self._already(repo, existing, request, now)
        check_can_use(cert, now, request.kind)
        account = account_key(cert.number)
        tz = self.settings.tz
        changes: dict = {}
        if request.kind is CertOpKind.SELL:
            if request.amount != cert.nominal:
                raise errors.ValidationError(f"Amount {request.amount}: a Sell is for the nominal {cert.nominal}")
            day = request.operation_time.astimezone(tz).date()
            if cert.valid_days:
                rule = LifeRule(lifetime_days=cert.valid_days)
                valid_until = day + timedelta(days=cert.valid_days - 1)
            else:
                rule = LifeRule(until=cert.valid_until) if cert.valid_until else LifeRule()
                valid_until = cert.valid_until
            _, expires_at = rule.life(day, tz)
            if expires_at is not None and expires_at <= now:
                raise errors.ValidationError(
                    f"certificate {cert.number} would be expired at once (valid through {valid_until})")
            ledger = CertificateLedger([], now)
            ledger.sell(cert.nominal, expires_at)
            changes = dict(state=State.ACTIVE.value, valid_until=valid_until, expires_at=expires_at,
                           sale_operation_id=request.operation_id, sold_at=now)
        elif request.kind is CertOpKind.REDEEM:
            # a journal row records what the till did: no PIN travels in the file (docs/offline-format.md)
            if cert.pin_hash and source is Source.ONLINE:
                self._check_pin(uow, repo, cert, request.pin)
            ledger = CertificateLedger(repo.load_lots(account), now)
            ledger.redeem(request.amount, cert.kind is CertKind.SINGLE_USE)
            if ledger.balance() == 0:
                changes = dict(state=State.REDEEMED.value)
        elif request.kind is CertOpKind.REFUND:
            original = repo.get_operation(request.original_operation_id)
            if original is None or original["kind"] != CertOpKind.REDEEM.ledger_kind:
                raise errors.OriginalNotFound(f"no redemption with OperationId {request.original_operation_id}")
            if original["card_number"] != account:
                raise errors.ValidationError(
                    f"redemption {request.original_operation_id} was made with another certificate")
            sources = repo.spend_sources(original["id"])
            left = sum((amount for _, amount in sources), ZERO)
            if request.amount > left:
                raise errors.ReturnExceedsSale(
                    f"Amount {request.amount} exceeds what is left of the redemption: {left} "
                    f"(it took {original['receipt_sum']})")
            ledger = CertificateLedger(repo.load_lots(account, [lot_id for lot_id, _ in sources]), now)
            by_id = {lot.id: lot for lot in ledger.lots}
            if any(by_id[lot_id].is_expired(now) for lot_id, _ in sources):
                raise errors.ValidationError("the redemption's money has expired meanwhile")  # guarded above
            ledger.refund([(by_id[lot_id], amount) for lot_id, amount in sources], request.amount)
            changes = dict(state=State.ACTIVE.value)
        else:  # RETURN_SALE
            original = repo.get_operation(request.original_operation_id)
            if (original is None or original["kind"] != CertOpKind.SELL.ledger_kind
                    or original["id"] != cert.sale_operation_id):
                raise errors.OriginalNotFound(
                    f"no sale in force of certificate {cert.number} with OperationId {request.original_operation_id}")
            if request.amount != cert.nominal:
                raise errors.ValidationError(f"Amount {request.amount}: a ReturnSale gives back the nominal {cert.nominal}")
            ledger = CertificateLedger(repo.load_lots(account), now)
            lots = [lot for lot in ledger.lots if lot.remaining > 0]
            if len(lots) != 1 or lots[0].remaining != cert.nominal or repo.has_spend(lots[0].id):
                raise errors.ReturnExceedsSale(
                    f"certificate {cert.number} has been used since its sale: only an untouched one is taken back")
            ledger.take_back(lots[0], cert.nominal)
            changes = dict(state=State.ISSUED.value, expires_at=None, sale_operation_id=None, sold_at=None,
                           valid_until=None if cert.valid_days else cert.valid_until)

        repo.insert_operation(
            id=request.operation_id, card_number=account, kind=request.kind.ledger_kind, source=source.value,
            kkm=request.kkm, store=request.store, receipt_number=request.receipt_number,
            operation_time=request.operation_time, business_date=request.operation_time.astimezone(tz).date(),
            content_hash=request.content_hash(), receipt_sum=request.amount, bonus_accrued=ZERO, bonus_spent=ZERO,
            accumulation_delta=ZERO, receipt_count_delta=0, original_operation_id=request.original_operation_id,
            created_at=now, **({"actor": actor[:255]} if actor else {}))
        repo.save_moves(account, request.operation_id, ledger.moves, now)
        if changes:
            repo.update_certificate(cert.number, **changes)
            cert = repo.get_certificate(cert.number)
        return CertificateResult(request.operation_id, APPLIED, self._view(repo, cert, now, ledger))

    # -- back office -----------------------------------------------------------------------------
    def add_range(self, first: int, last: int, nominal, kind: CertKind = CertKind.MULTI_USE, prefix: str = "",
                  width: int = 0, valid_days: int | None = None, until: date | None = None, with_pin: bool = False,
                  pins_sink: Callable[[list[tuple[str, str]]], None] | None = None,
                  actor: str | None = None) -> RangeResult:
        """Group input of printed certificates (state Issued). With PINs, ``pins_sink`` gets every new
        certificate's PIN once, before the transaction commits (if it fails, nothing is created)."""
        nominal = money(nominal, "--nominal")
        if nominal <= 0:
            raise errors.ValidationError("--nominal must be above 0")
        if valid_days is not None and until is not None:
            raise errors.ValidationError("give --valid-days or --until, not both")
        if valid_days is not None and valid_days <= 0:
            raise errors.ValidationError("--valid-days must be at least 1")
        now = self.clock()
        if until is not None and until < now.astimezone(self.settings.tz).date():
            raise errors.ValidationError(f"--until {until} is in the past")
        if with_pin and pins_sink is None:
            raise errors.ValidationError("PINs are generated only with a file to write them to (--pins-out)")
        numbers = numbers_of_range(first, last, prefix, width)
        low, high = min(numbers), max(numbers)  # as text: the range's numbers all lie between these
        with UnitOfWork(self.engine, write=True) as uow:
            repo = CertificateRepository(uow.conn)
            wanted = set(numbers)
            existing = repo.numbers_between(low, high) & wanted
            new = [n for n in numbers if n not in existing] if existing else numbers
            taken = {a for a in repo.accounts_between(low, high) if a[len(account_key("")):] in wanted}
            if taken:
                raise errors.ValidationError(f"{len(taken)} account key(s) are used by cards, e.g. {min(taken)}")
            if with_pin:  # one hash per certificate: rows from here
                pins = [(n, new_pin()) for n in new]
                hashes = {n: hash_pin(p) for n, p in pins}
                repo.insert_certificates([
                    dict(number=n, account=account_key(n), kind=kind.value, nominal=nominal,
                         state=State.ISSUED.value, blocked=False, block_reason=None, valid_days=valid_days,
                         valid_until=until, expires_at=None, pin_hash=hashes[n], pin_failures=0,
                         sale_operation_id=None, created_at=now, sold_at=None) for n in new], now)
                if pins:
                    pins_sink(pins)
            elif new:
                repo.insert_range(first, last, prefix, width, kind.value, nominal, valid_days, until, now)
            if new:
                audit.record(uow.conn, actor, "certificates.add-range", f"{new[0]}..{new[-1]}", created=len(new),
                             nominal=str(nominal), kind=kind.value, pins=with_pin)
            uow.commit()
        return RangeResult(created=new, skipped=sorted(existing))

    def count_range(self, first: str, last: str | None = None) -> int:
        """How many certificates lie in first..last (as set_blocked reads the range)."""
        if last is not None:
            _check_range(first, last)
        with UnitOfWork(self.engine) as uow:
            return CertificateRepository(uow.conn).count_between(first, last or first)

    def set_blocked(self, first: str, last: str | None, blocked: bool, actor: str | None = None) -> int:
        """Block or unblock one certificate or the range first..last (numbers compare as numbers, as for
        cards: see card_range). Unblocking also clears the count of wrong PINs. Returns how many changed."""
        first = certificate_number(first, "NUMBER")
        last = certificate_number(last, "--to") if last else None
        if last is not None:
            _check_range(first, last)
        values = dict(blocked=blocked, block_reason=OPERATOR_REASON if blocked else None)
        if not blocked:
            values["pin_failures"] = 0
        with UnitOfWork(self.engine, write=True) as uow:
            repo = CertificateRepository(uow.conn)
            if last is None:
                if repo.get_certificate(first, lock=True) is None:
                    raise CertificateNotFound(f"certificate {first} not found")
                changed = repo.update_certificate(first, **values)
            else:
                changed = repo.update_between(first, last, (certificates.c.blocked != blocked,), **values)
            audit.record(uow.conn, actor, "certificates.block" if blocked else "certificates.unblock",
                         first if last is None else f"{first}..{last}", changed=changed)
            uow.commit()
        return changed

    def report(self, first: date, last: date) -> CertificateReport:
        if first > last:
            raise errors.ValidationError(f"--from {first} is after --to {last}")
        start, end = day_bounds(first, last, self.settings.tz)
        now = self.clock()
        with UnitOfWork(self.engine) as uow:
            repo = CertificateRepository(uow.conn)
            t = repo.turnovers(start, end)
            return CertificateReport(
                first, last, by_status=sorted(repo.by_status(now)), counts=repo.operation_counts(start, end),
                opening=t["opening"], sold=t["credit"], returned=-t["takeback"], redeemed=-t["spend"],
                forfeited=-t["forfeit"], refunded=t["refund"], expired=-t["expiry"], closing=t["closing"],
                liability=repo.live_liability(now))

    def verify(self) -> list[str]:
        with UnitOfWork(self.engine) as uow:
            return CertificateRepository(uow.conn).verify(self.clock())

