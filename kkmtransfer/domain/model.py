"""Value objects of the ledger and the validation of what a register reports."""
from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from enum import Enum

from .errors import ValidationError

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
MAX_AMOUNT = Decimal("999999999999.99")
# The most a card's lot or balance of one measure may hold (either sign). The database stores amounts as
# whole hundredths in a BIGINT (±92,233,720,368,547,758.07); this bound leaves room for sums over many lots.
MAX_BALANCE = Decimal("999999999999999.99")


class Measure(str, Enum):
    BONUS = "bonus"
    ACCUMULATION = "accumulation"
    RECEIPT_COUNT = "receipt_count"
    CERTIFICATE = "certificate"  # a gift certificate's money (its account is cert:<number>)


class Kind(str, Enum):
    SALE = "Sale"
    RETURN = "Return"
    ACCRUAL = "Accrual"
    WRITE_OFF = "WriteOff"
    ACTION = "Action"
    ZEROING = "Zeroing"
    ANNULMENT = "Annulment"
    INITIAL_BALANCE = "InitialBalance"
    EXPIRY = "Expiry"
    HOLD = "Hold"  # bonuses held by ReserveBonus until the sale confirms or the hold is released


class Source(str, Enum):
    ONLINE = "Online"
    OFFLINE = "Offline"
    NIGHTLY = "Nightly"
    BACKOFFICE = "BackOffice"


class CardStatus(str, Enum):
    ACTIVE = "Active"
    BLOCKED = "Blocked"


class Role(str, Enum):
    """Why an entry moved an amount into or out of a lot."""

    CREDIT = "credit"      # accrual of a measure (a new or existing lot, or paying a debt)
    CREDIT_DEFERRED = "credit_pending"      # accrual into a lot that starts later (posted by the nightly)
    SPEND = "spend"        # bonus spent on a receipt
    REFUND = "refund"      # spent bonus given back by a return, to the lot it came from
    TAKEBACK = "takeback"  # accrued amount taken back by a return (or a negative delta)
    TAKEBACK_DEFERRED = "takeback_pending"  # taken back from a lot that has not started yet
    DEBT = "debt"          # what a takeback could not find in any lot
    EXPIRY = "expiry"      # burnt: by the nightly regulation, or at once when moved into a burnt lot
    HOLD = "hold"          # bonus held by a reservation (ReserveBonus)
    RELEASE = "release"    # held bonus given back to the lot it was held from
    FORFEIT = "forfeit"    # the rest of a single-use gift certificate, lost when it is redeemed


# Moves into lots that have not started: the card's books show them when the lot starts (the nightly
# "Accrual" document), not with the operation that made them.
DEFERRED_ROLES = (Role.CREDIT_DEFERRED, Role.TAKEBACK_DEFERRED)


def _utc_second(t: datetime) -> str:
    """A UTC time as %Y-%m-%dT%H:%M:%SZ (isoformat is cheaper than strftime, and the same from year 1000)."""
    if t.year >= 1000 and t.utcoffset() == _NO_OFFSET:
        return t.replace(microsecond=0, tzinfo=None).isoformat() + "Z"
    return t.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


_NO_OFFSET = timedelta(0)
_json_string = json.encoder.encode_basestring_ascii  # what json.dumps writes for a str (ensure_ascii)
_MONEY_SEEN: dict[tuple[str, bool], Decimal] = {}  # text -> its money: amounts in files repeat


def money(value, field_name: str, *, allow_negative: bool = False) -> Decimal:
    """A Decimal with at most two fraction digits, or ValidationError."""
    if isinstance(value, str):  # a text seen before is the same money (Decimals are immutable)
        key = (value, allow_negative)
        found = _MONEY_SEEN.get(key)
        if found is not None:
            return found
        found = _money(value, field_name, allow_negative)
        if len(_MONEY_SEEN) >= 8192:
            _MONEY_SEEN.clear()
        _MONEY_SEEN[key] = found
        return found
    return _money(value, field_name, allow_negative)


def _money(value, field_name: str, allow_negative: bool) -> Decimal:
    if isinstance(value, float):
        raise ValidationError(f"{field_name}: money must not be a float")
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise ValidationError(f"{field_name}: not a decimal number: {value!r}") from exc
    if not dec.is_finite():
        raise ValidationError(f"{field_name}: not a finite number")
    if abs(dec) > MAX_AMOUNT:
        raise ValidationError(f"{field_name}: out of range")
    if dec != dec.quantize(CENT):
        raise ValidationError(f"{field_name}: at most 2 fraction digits allowed, got {value}")
    if not allow_negative and dec < 0:
        raise ValidationError(f"{field_name}: must not be negative, got {value}")
    return dec.quantize(CENT) + ZERO  # also turns -0.00 into 0.00


_CANONICAL_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_guid(value, field_name: str = "OperationId") -> str:
    if isinstance(value, str) and _CANONICAL_GUID.fullmatch(value):  # what str(uuid.UUID(value)) gives
        return value
    if value is None or str(value).strip() == "":
        raise ValidationError(f"{field_name} is required")
    try:
        return str(uuid.UUID(str(value).strip()))
    except ValueError as exc:
        raise ValidationError(f"{field_name}: not a GUID: {value!r}") from exc


def required_text(value, field_name: str, max_len: int = 64) -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise ValidationError(f"{field_name} is required")
    if len(text) > max_len:
        raise ValidationError(f"{field_name}: longer than {max_len} characters")
    return text


def optional_text(value, field_name: str, max_len: int = 64) -> str | None:
    if value is None or value == "":
        return None
    text = str(value).strip()
    if len(text) > max_len:
        raise ValidationError(f"{field_name}: longer than {max_len} characters")
    return text or None


def aware_utc(value, field_name: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValidationError(f"{field_name}: a dateTime is required")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{field_name}: the time must carry a UTC offset (e.g. 2026-11-23T10:15:00+03:00)")
    return value.astimezone(timezone.utc)


_PHONE_JUNK = re.compile(r"[\s\-()+]")


def normalise_phone(raw) -> str:
    """Bring a phone to its 10 significant digits, as the seeds say.

    Spaces, '-', '(', ')' and '+' are dropped, then a leading 7, 8, +7 or 007 is dropped.
    """
    text = _PHONE_JUNK.sub("", "" if raw is None else str(raw))
    if not text.isdigit() or not text.isascii():
        raise ValidationError(f"Phone: only digits, spaces, '-', '(', ')' and '+' are allowed: {raw!r}")
    if len(text) == 13 and text.startswith("007"):
        text = text[3:]
    elif len(text) == 11 and text[0] in "78":
        text = text[1:]
    if len(text) != 10:
        raise ValidationError(f"Phone: expected 10 digits after dropping the country prefix, got {raw!r}")
    return text


_SALE, _RETURN = Kind.SALE, Kind.RETURN
# OperationRequest.build: the kinds a register may send, by text and as members (Kind is a str enum:
# a member is equal to, and hashes as, its text)
_KINDS = {Kind.SALE.value: Kind.SALE, Kind.RETURN.value: Kind.RETURN}


@dataclass(frozen=True)
class OperationRequest:
    """One receipt closed with a card, as a register reports it (already validated and normalised)."""

    operation_id: str
    card_number: str
    kkm: str
    store: str | None
    receipt_number: str | None
    operation_time: datetime  # UTC
    kind: Kind
    receipt_sum: Decimal
    bonus_accrued: Decimal
    bonus_spent: Decimal
    accumulation_delta: Decimal  # effective (default applied)
    receipt_count_delta: int      # effective (default applied)
    promotion_code: str | None
    original_operation_id: str | None
    # the receipt session (CONTRACT.md, Extensions A): lines (ReceiptLine of domain.program), whether the
    # register gave BonusAccrued / BonusSpent (with lines the server calculates what is not given)
    lines: tuple = ()
    spend_code: str | None = None
    accrued_given: bool = True
    spent_given: bool = True

    @classmethod
    def build(
        cls,
        *,
        operation_id,
        card_number,
        kkm,
        operation_time,
        kind,
        receipt_sum,
        bonus_accrued=ZERO,
        bonus_spent=ZERO,
        accumulation_delta=None,
        receipt_count_delta=None,
        store=None,
        receipt_number=None,
        promotion_code=None,
        original_operation_id=None,
        lines=None,
        spend_code=None,
    ) -> "OperationRequest":
        kind_enum = _KINDS.get(kind) if isinstance(kind, str) else None  # "Sale", "Return" or the members
        if kind_enum is None:
            raise ValidationError(f"Kind: must be Sale or Return, got {kind!r}")
        receipt_sum = money(receipt_sum, "ReceiptSum") if receipt_sum is not None else None
        if receipt_sum is None:
            raise ValidationError("ReceiptSum is required")
        accrued_given, spent_given = bonus_accrued is not None, bonus_spent is not None
        lines = tuple(lines or ())
        if lines:
            from .program import check_lines

            check_lines(lines)
        bonus_accrued = money(ZERO if bonus_accrued is None else bonus_accrued, "BonusAccrued")
        bonus_spent = money(ZERO if bonus_spent is None else bonus_spent, "BonusSpent")
        if accumulation_delta is None:  # the receipt's sum (money already): what money() would give
            accumulation_delta = receipt_sum if kind_enum is _SALE else ZERO - receipt_sum
        else:
            accumulation_delta = money(accumulation_delta, "AccumulationDelta", allow_negative=True)
        if receipt_count_delta is None:
            receipt_count_delta = 1 if kind_enum is _SALE else 0
        if isinstance(receipt_count_delta, bool) or not isinstance(receipt_count_delta, int):
            raise ValidationError("ReceiptCountDelta: must be a whole number")
        if abs(receipt_count_delta) > 1_000_000:
            raise ValidationError("ReceiptCountDelta: out of range")
        original = None
        if kind_enum is _RETURN:
            original = canonical_guid(original_operation_id, "OriginalOperationId")
        elif original_operation_id not in (None, ""):
            raise ValidationError("OriginalOperationId is only allowed on a Return")
        op_id = canonical_guid(operation_id)
        if original == op_id:
            raise ValidationError("OriginalOperationId must name another operation")
        return cls(
            operation_id=op_id,
            card_number=required_text(card_number, "CardNumber", 32),
            kkm=required_text(kkm, "KKM"),
            store=optional_text(store, "Store"),
            receipt_number=optional_text(receipt_number, "ReceiptNumber"),
            operation_time=aware_utc(operation_time, "OperationTime"),
            kind=kind_enum,
            receipt_sum=receipt_sum,
            bonus_accrued=bonus_accrued,
            bonus_spent=bonus_spent,
            accumulation_delta=accumulation_delta,
            receipt_count_delta=receipt_count_delta,
            promotion_code=optional_text(promotion_code, "PromotionCode"),
            original_operation_id=original,
            lines=lines,
            spend_code=optional_text(spend_code, "SpendCode"),
            accrued_given=accrued_given,
            spent_given=spent_given,
        )

    def content_hash(self) -> str:
        """A hash of what the operation *does*, used to tell a retry from a conflicting reuse of an id.

        Covered: card, register, kind, time (to the second, UTC), every amount (with defaults applied),
        promotion and original operation. Not covered: Store and ReceiptNumber, which are descriptive
        and may be missing on one path (online) and present on the other (offline journal).
        """
        if not self.lines:  # the same bytes as json.dumps(payload, sort_keys=True, separators=(",", ":"))
            q = _json_string
            blob = (f'{{"acc":{q(str(self.accumulation_delta))},"accrued":{q(str(self.bonus_accrued))},'
                    f'"card":{q(self.card_number)},"count":{int(self.receipt_count_delta)},'
                    f'"kind":{q(self.kind.value)},"kkm":{q(self.kkm)},"orig":{q(self.original_operation_id or "")},'
                    f'"promo":{q(self.promotion_code or "")},"spent":{q(str(self.bonus_spent))},'
                    f'"sum":{q(str(self.receipt_sum))},'
                    f'"time":"{_utc_second(self.operation_time)}"}}')
            return hashlib.sha256(blob.encode()).hexdigest()
        payload = {
            "card": self.card_number,
            "kkm": self.kkm,
            "kind": self.kind.value,
            "time": self.operation_time.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sum": str(self.receipt_sum),
            "accrued": str(self.bonus_accrued),
            "spent": str(self.bonus_spent),
            "acc": str(self.accumulation_delta),
            "count": self.receipt_count_delta,
            "promo": self.promotion_code or "",
            "orig": self.original_operation_id or "",
        }
        if self.lines:  # receipts without lines hash as they always did
            payload["lines"] = [[x.line_number, x.article, x.group or "", str(x.quantity), str(x.price), str(x.sum)]
                                for x in sorted(self.lines, key=lambda x: x.line_number)]
            payload["given"] = [self.accrued_given, self.spent_given]
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass
class Lot:
    """A bucket of one measure on one card with one start and one end of life."""

    id: int | None
    measure: Measure
    remaining: Decimal
    available_from: datetime | None  # UTC; None: from the start
    expires_at: datetime | None      # UTC instant at which it burns; None: never
    exclusive: bool = False          # belongs to the operation that made it: no other credit goes in

    def is_pending(self, now: datetime) -> bool:
        return self.available_from is not None and self.available_from > now

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def is_live(self, now: datetime) -> bool:
        """Counts in the balance now: started and not yet burnt."""
        return not self.is_pending(now) and not self.is_expired(now)


@dataclass(frozen=True)
class Balances:
    bonus: Decimal
    bonus_pending: Decimal
    next_expiry_date: date | None
    next_expiry_amount: Decimal
    accumulation: Decimal
    accumulation_pending: Decimal
    receipt_count: int
    receipt_count_pending: int


@dataclass(frozen=True)
class CardView:
    number: str
    status: CardStatus
    holder: str | None
    balances: Balances


@dataclass(frozen=True)
class OperationView:
    operation_id: str
    time: datetime
    kind: str
    source: str
    kkm: str | None
    receipt_number: str | None
    bonus: Decimal
    accumulation: Decimal
    receipt_count: int


@dataclass(frozen=True)
class ApplyResult:
    operation_id: str
    status: str  # "Applied" / "AlreadyApplied"
    card: CardView
    bonus_accrued: Decimal | None = None  # what was applied (None: not told)
    bonus_spent: Decimal | None = None
    message: str | None = None
