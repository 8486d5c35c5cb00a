"""Gift certificates: states, kinds, what each operation may do, PINs (pure: no SQL, SOAP or HTTP).

A certificate is an account of the one ledger (see docs/operations.md, "Certificates in the ledger"):
its money is a lot of the measure ``certificate`` on the account ``cert:<number>``. A sale credits the
nominal into a lot of its own that burns when the certificate's validity ends; a redemption spends from
it; a refund gives back to it what a redemption took; a return of the sale takes the nominal back. The
state machine below says which operation is allowed in which state; ``CertificateLedger`` plans the
moves on the lots (reusing ``Move``/``Role`` of the card ledger), the adapter writes them.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Iterable

from . import errors
from .ledger import Move
from .model import ZERO, Lot, Measure, Role, aware_utc, canonical_guid, money, optional_text, required_text

ACCOUNT_PREFIX = "cert:"
# The status of a certificate's account row in ``cards``: never Active, so no card path uses it.
ACCOUNT_STATUS = "Certificate"
MAX_NUMBER_LEN = 32 - len(ACCOUNT_PREFIX)  # 27
PIN_LENGTH = 8
MAX_PIN_FAILURES = 5
MAX_RANGE = 1_000_000


class CertificateNotFound(errors.DomainError):
    code = "Client.CertificateNotFound"


class CertificateNotActive(errors.DomainError):
    code = "Client.CertificateNotActive"


class CertificateExpired(errors.DomainError):
    code = "Client.CertificateExpired"


class CertificatePinInvalid(errors.DomainError):
    code = "Client.CertificatePinInvalid"


class InsufficientCertificateBalance(errors.DomainError):
    code = "Client.InsufficientCertificateBalance"


FAULT_CODES = {cls.code for cls in (CertificateNotFound, CertificateNotActive, CertificateExpired,
                                    CertificatePinInvalid, InsufficientCertificateBalance)}


class CertKind(str, Enum):
    SINGLE_USE = "SingleUse"
    MULTI_USE = "MultiUse"

    @classmethod
    def from_cli(cls, value: str) -> "CertKind":
        return {"single-use": cls.SINGLE_USE, "multi-use": cls.MULTI_USE}[value]


class State(str, Enum):
    """The stored life state. ``Expired`` is also derived from the clock (an Active certificate whose
    validity ended is Expired at once, before the nightly writes its balance off); ``Blocked`` is a flag
    on top of the state (unblocking returns to it)."""

    ISSUED = "Issued"
    ACTIVE = "Active"
    REDEEMED = "Redeemed"
    EXPIRED = "Expired"


class CertOpKind(str, Enum):
    SELL = "Sell"
    REDEEM = "Redeem"
    REFUND = "Refund"
    RETURN_SALE = "ReturnSale"

    @property
    def ledger_kind(self) -> str:
        """The ``operations.kind`` of this operation (distinct from every card kind)."""
        return "Certificate" + self.value


LEDGER_KINDS = {k.ledger_kind: k for k in CertOpKind}


def account_key(number: str) -> str:
    """The ledger account of a certificate: a key space of its own (card numbers never start with it)."""
    return ACCOUNT_PREFIX + number


def certificate_number(value, field_name: str = "Number") -> str:
    return required_text(value, field_name, MAX_NUMBER_LEN)


def numbers_of_range(first: int, last: int, prefix: str = "", width: int = 0) -> list[str]:
    if first < 0 or last < first:
        raise errors.ValidationError("--from must be >= 0 and --to must not be below --from")
    if last - first >= MAX_RANGE:
        raise errors.ValidationError(f"at most {MAX_RANGE:,} certificates at a time")
    numbers = [f"{prefix}{n:0{width}d}" for n in (first, last)]
    if any(len(n) > MAX_NUMBER_LEN for n in numbers):
        raise errors.ValidationError(f"certificate numbers are at most {MAX_NUMBER_LEN} characters")
    return [f"{prefix}{n:0{width}d}" for n in range(first, last + 1)]


@dataclass(frozen=True)
class Certificate:
    number: str
    kind: CertKind
    nominal: Decimal
    state: State
    blocked: bool
    block_reason: str | None
    valid_days: int | None
    valid_until: date | None     # fixed at issue (--until) or at sale (--valid-days)
    expires_at: datetime | None  # UTC instant its money burns (set at sale)
    pin_hash: str | None
    pin_failures: int
    sale_operation_id: str | None

    def status(self, now: datetime) -> str:
        """The contract's Status now."""
        if self.blocked:
            return "Blocked"
        if self.state is State.ACTIVE and self.expires_at is not None and self.expires_at <= now:
            return State.EXPIRED.value
        return self.state.value


@dataclass(frozen=True)
class CertificateView:
    number: str
    status: str
    kind: CertKind
    nominal: Decimal
    balance: Decimal
    valid_until: date | None


@dataclass(frozen=True)
class CertificateOperationRequest:
    operation_id: str
    number: str
    pin: str | None
    kkm: str
    store: str | None
    receipt_number: str | None
    operation_time: datetime
    kind: CertOpKind
    amount: Decimal
    original_operation_id: str | None

    @classmethod
    def build(cls, *, operation_id, number, kkm, operation_time, kind, amount, pin=None, store=None,
              receipt_number=None, original_operation_id=None) -> "CertificateOperationRequest":
        try:
            kind_enum = CertOpKind(kind.value if isinstance(kind, CertOpKind) else kind)
        except ValueError:
            raise errors.ValidationError(f"Kind: must be Sell, Redeem, Refund or ReturnSale, got {kind!r}")
        if amount is None:
            raise errors.ValidationError("Amount is required")
        amount = money(amount, "Amount")
        if amount <= 0:
            raise errors.ValidationError(f"Amount: must be > 0, got {amount}")
        op_id = canonical_guid(operation_id)
        original = None
        if kind_enum in (CertOpKind.REFUND, CertOpKind.RETURN_SALE):
            original = canonical_guid(original_operation_id, "OriginalOperationId")
            if original == op_id:
                raise errors.ValidationError("OriginalOperationId must name another operation")
        elif original_operation_id not in (None, ""):
            raise errors.ValidationError("OriginalOperationId is only allowed on a Refund or a ReturnSale")
        return cls(operation_id=op_id, number=certificate_number(number), pin=optional_text(pin, "Pin", 32),
                   kkm=required_text(kkm, "KKM"), store=optional_text(store, "Store"),
                   receipt_number=optional_text(receipt_number, "ReceiptNumber"),
                   operation_time=aware_utc(operation_time, "OperationTime"), kind=kind_enum, amount=amount,
                   original_operation_id=original)

    def content_hash(self) -> str:
        """What the operation does (the PIN, Store and ReceiptNumber are not part of it). Prefixed so that
        no card operation's hash can ever equal it: a card id reused for a certificate is a conflict."""
        payload = {
            "certificate": self.number,
            "kkm": self.kkm,
            "kind": self.kind.value,
            "time": self.operation_time.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "amount": str(self.amount),
            "orig": self.original_operation_id or "",
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(b"certificate:" + blob).hexdigest()


# -- the rules of each operation ---------------------------------------------------------------
def check_can_use(cert: Certificate, now: datetime, op: CertOpKind) -> None:
    """Raise the fault an operation of this kind meets on this certificate now, if any."""
    if op is CertOpKind.SELL:
        if cert.blocked:
            raise CertificateNotActive(f"certificate {cert.number} is blocked")
        if cert.state is not State.ISSUED:
            raise CertificateNotActive(f"certificate {cert.number} is {cert.state.value}: only an Issued one can be sold")
        return
    if cert.state is State.ISSUED:
        raise CertificateNotActive(f"certificate {cert.number} is Issued: it has not been sold")
    if op is CertOpKind.REDEEM:
        if cert.blocked:
            raise CertificateNotActive(f"certificate {cert.number} is blocked")
        if cert.state is State.REDEEMED:
            raise CertificateNotActive(f"certificate {cert.number} is used up")
    if op is CertOpKind.RETURN_SALE and cert.blocked:
        raise CertificateNotActive(f"certificate {cert.number} is blocked")
    if cert.state is State.EXPIRED or (cert.expires_at is not None and cert.expires_at <= now):
        raise CertificateExpired(f"certificate {cert.number} expired"
                                 + (f" after {cert.valid_until.isoformat()}" if cert.valid_until else ""))


class CertificateLedger:
    """Plans the moves of one certificate operation on the certificate's lots (locked by the caller)."""

    def __init__(self, lots: Iterable[Lot], now: datetime):
        self.lots = [lot for lot in lots if lot.measure is Measure.CERTIFICATE]
        self.now = now
        self.moves: list[Move] = []

    def balance(self) -> Decimal:
        return sum((lot.remaining for lot in self.lots if lot.is_live(self.now)), ZERO)

    def _move(self, lot: Lot, amount: Decimal, role: Role) -> None:
        if amount:
            lot.remaining += amount
            self.moves.append(Move(lot, amount, role))

    def sell(self, nominal: Decimal, expires_at: datetime | None) -> None:
        lot = Lot(id=None, measure=Measure.CERTIFICATE, remaining=ZERO, available_from=None,
                  expires_at=expires_at, exclusive=True)
        self.lots.append(lot)
        self._move(lot, nominal, Role.CREDIT)

    def _live(self) -> list[Lot]:
        return [lot for lot in self.lots if lot.remaining > 0 and lot.is_live(self.now)]

    def redeem(self, amount: Decimal, single_use: bool) -> Decimal:
        """Spend ``amount``; a single-use certificate loses the rest (role ``forfeit``). Returns the rest
        forfeited."""
        balance = self.balance()
        if amount > balance:
            raise InsufficientCertificateBalance(f"Amount {amount} is above the certificate's balance {balance}")
        left = amount
        for lot in self._live():
            take = min(lot.remaining, left)
            self._move(lot, -take, Role.SPEND)
            left -= take
        assert left == 0
        forfeited = ZERO
        if single_use:
            for lot in self._live():
                forfeited += lot.remaining
                self._move(lot, -lot.remaining, Role.FORFEIT)
        return forfeited

    def refund(self, sources: list[tuple[Lot, Decimal]], amount: Decimal) -> None:
        """Give back to the lots a redemption spent from (last drawn first); the caller checked the limit."""
        left = amount
        for lot, refundable in reversed(sources):
            give = min(refundable, left)
            if give > 0:
                self._move(lot, give, Role.REFUND)
                left -= give
        if left:
            raise AssertionError(f"refund of {amount} exceeds what the redemption took")

    def take_back(self, lot: Lot, amount: Decimal) -> None:
        self._move(lot, -amount, Role.TAKEBACK)


# -- PINs ------------------------------------------------------------------------------------------
# scrypt at a low cost: a PIN is checked on every payment, and add-range --pin hashes many at once.
# 8 random digits at ~1 ms per guess keep an offline search of a leaked hash to CPU-days; online
# guessing is stopped after MAX_PIN_FAILURES wrong PINs in a row.
PIN_N, PIN_R, PIN_P = 2 ** 10, 8, 1


def new_pin() -> str:
    return "".join(secrets.choice("0123456789") for _ in range(PIN_LENGTH))


def hash_pin(pin: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=PIN_N, r=PIN_R, p=PIN_P, dklen=32)
    return "scrypt${}${}${}${}${}".format(PIN_N, PIN_R, PIN_P, base64.b64encode(salt).decode(),
                                         base64.b64encode(digest).decode())


def verify_pin(pin: str | None, stored: str) -> bool:
    if not pin:
        return False
    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(pin.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                              dklen=len(base64.b64decode(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))
