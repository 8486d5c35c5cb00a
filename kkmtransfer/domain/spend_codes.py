"""SMS codes before spending bonuses: the pure rules (no SQL, no HTTP, no clock of its own).

A code is ``length`` decimal digits drawn from :mod:`secrets`; the server keeps only an HMAC-SHA256 of
it (keyed with the server's secret and bound to the card number), so a copy of the database does not
reveal live codes without the key. A code lives ``ttl`` seconds, is good for one spend, and is locked by
``max_tries`` wrong entries. New codes are rationed per card (an SMS costs the chain money): at most one
per ``min_interval`` and ``per_hour`` per rolling hour. Every decision takes ``now`` from the caller.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Iterable

from .errors import DomainError, ValidationError

MIN_LENGTH, MAX_LENGTH = 4, 6
DEFAULT_LENGTH = 6            # 3 tries against 10**6 codes: a guess succeeds with p = 3e-6
DEFAULT_TTL_SECONDS = 300
DEFAULT_MAX_TRIES = 3
DEFAULT_MIN_INTERVAL_SECONDS = 60
DEFAULT_PER_HOUR = 5


# -- faults (the contract's codes) -------------------------------------------------------------
class SpendCodeRequired(DomainError):
    code = "Client.SpendCodeRequired"


class SpendCodeInvalid(DomainError):
    code = "Client.SpendCodeInvalid"


class SpendCodeLocked(DomainError):
    code = "Client.SpendCodeLocked"


class SpendCodeTooFrequent(DomainError):
    code = "Client.SpendCodeTooFrequent"


class SmsGatewayUnavailable(DomainError):
    code = "Server.SmsGatewayUnavailable"


class Policy(str, Enum):
    """``KKMTRANSFER_SPEND_CODE``: which cards need a code to spend bonuses online."""

    OFF = "off"            # none (default)
    ALL = "all"            # every card
    PER_CARD = "per-card"  # the cards marked with `kkmtransfer cards set-spend-code NUMBER on`

    def required_for(self, card_flag: bool) -> bool:
        return self is Policy.ALL or (self is Policy.PER_CARD and bool(card_flag))


class CodeStatus(str, Enum):
    PENDING = "pending"        # being sent: not usable yet, but counts against the 60 s interval
    ACTIVE = "active"          # sent; usable until it expires
    USED = "used"              # spent once: never again
    LOCKED = "locked"          # too many wrong entries
    SUPERSEDED = "superseded"  # a newer code was sent to the card
    FAILED = "failed"          # the gateway refused or was unreachable: no SMS went out
    UNCERTAIN = "uncertain"    # the request reached the gateway but no answer came: an SMS may have gone


# Statuses whose SMS went out (or may have): they count against the hourly ration. A code that failed
# before the gateway took it does not: the cashier may try again at once when the gateway is back.
RATIONED = frozenset({CodeStatus.PENDING, CodeStatus.ACTIVE, CodeStatus.USED, CodeStatus.LOCKED,
                      CodeStatus.SUPERSEDED, CodeStatus.UNCERTAIN})
# Statuses that hold the 60-second interval: an SMS surely on its way (an uncertain one only counts per hour).
INTERVAL = RATIONED - {CodeStatus.UNCERTAIN}


@dataclass(frozen=True)
class CodeRules:
    length: int = DEFAULT_LENGTH
    ttl_seconds: int = DEFAULT_TTL_SECONDS
    max_tries: int = DEFAULT_MAX_TRIES
    min_interval_seconds: int = DEFAULT_MIN_INTERVAL_SECONDS
    per_hour: int = DEFAULT_PER_HOUR

    def __post_init__(self):
        if not MIN_LENGTH <= self.length <= MAX_LENGTH:
            raise ValueError(f"a spend code has {MIN_LENGTH} to {MAX_LENGTH} digits, not {self.length}")
        if self.ttl_seconds <= 0 or self.max_tries <= 0 or self.min_interval_seconds < 0 or self.per_hour <= 0:
            raise ValueError("spend code lifetime, tries and hourly ration must be positive")

    @property
    def ttl(self) -> timedelta:
        return timedelta(seconds=self.ttl_seconds)


def generate_code(length: int = DEFAULT_LENGTH) -> str:
    """``length`` decimal digits, uniformly from the OS's cryptographic source (leading zeros kept)."""
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise ValueError(f"a spend code has {MIN_LENGTH} to {MAX_LENGTH} digits, not {length}")
    return f"{secrets.randbelow(10 ** length):0{length}d}"


def code_hash(key: bytes, card_number: str, code: str) -> str:
    """The stored form of a code: HMAC-SHA256(key, card number + code), hex."""
    return hmac.new(key, f"{card_number}\x00{code}".encode(), hashlib.sha256).hexdigest()


def code_matches(key: bytes, card_number: str, entered: str, stored_hash: str) -> bool:
    return hmac.compare_digest(code_hash(key, card_number, entered), stored_hash)


def normalise_entered(raw, length: int) -> str:
    """What the cashier typed, without spaces and dashes; a ValidationError when it cannot be a code."""
    text = "".join(ch for ch in ("" if raw is None else str(raw)) if ch not in " -\t")
    if not text.isascii() or not text.isdigit() or len(text) != length:
        raise ValidationError(f"SpendCode: expected {length} digits, got {len(text)} characters")
    return text


def mask_phone(phone10: str) -> str:
    """``9161234567`` → ``+7 *** ***-45-67``: enough for the holder to recognise the phone."""
    return f"+7 *** ***-{phone10[-4:-2]}-{phone10[-2:]}"


def gateway_phone(phone10: str) -> str:
    """The phone as SMS gateways want it: 11 digits starting with 7."""
    if len(phone10) != 10 or not phone10.isdigit():
        raise ValueError(f"a stored phone has 10 digits, not {phone10!r}")
    return "7" + phone10


def render_text(template: str, code: str) -> str:
    return template.replace("{code}", code)


def wait_before_new_code(sent: Iterable[tuple[datetime, CodeStatus]], now: datetime,
                         rules: CodeRules) -> int:
    """Seconds the card must wait before a new code may be sent (0: now). ``sent`` are the card's codes
    of the last hour or more: (created_at, status)."""
    hour_ago = now - timedelta(hours=1)
    wait = 0
    recent = [(at, st) for at, st in sent if at > hour_ago]
    interval = [at for at, st in recent if st in INTERVAL]
    if interval:
        last = max(interval)
        ready = last + timedelta(seconds=rules.min_interval_seconds)
        if ready > now:
            wait = max(wait, _ceil_seconds(ready - now))
    rationed = sorted(at for at, st in recent if st in RATIONED)
    if len(rationed) >= rules.per_hour:
        # the oldest of the last `per_hour` leaves the window first
        ready = rationed[-rules.per_hour] + timedelta(hours=1)
        wait = max(wait, _ceil_seconds(ready - now))
    return wait


def _ceil_seconds(delta: timedelta) -> int:
    whole = int(delta.total_seconds())
    return whole + (1 if delta.total_seconds() > whole else 0)


class Verdict(str, Enum):
    ACCEPTED = "accepted"
    WRONG = "wrong"            # counted as a try
    LOCKED_NOW = "locked"      # this wrong try was the last allowed one
    LOCKED = "was_locked"      # locked before this try
    EXPIRED = "expired"
    USED = "used"
    NO_CODE = "no_code"        # no code was sent to the card (or it was superseded / never delivered)


@dataclass(frozen=True)
class StoredCode:
    status: CodeStatus
    code_hash: str
    expires_at: datetime
    tries: int


def judge(key: bytes, card_number: str, entered: str, latest: StoredCode | None, now: datetime,
          rules: CodeRules) -> Verdict:
    """The verdict on a code the cashier entered, against the card's latest code."""
    if latest is None or latest.status in (CodeStatus.PENDING, CodeStatus.FAILED, CodeStatus.SUPERSEDED):
        return Verdict.NO_CODE
    # ACTIVE, or UNCERTAIN (the gateway took the request but did not answer: the SMS may have arrived,
    # and then its code works like any other)
    if latest.status is CodeStatus.LOCKED:
        return Verdict.LOCKED
    if latest.status is CodeStatus.USED:
        return Verdict.USED
    if now >= latest.expires_at:
        return Verdict.EXPIRED
    if code_matches(key, card_number, entered, latest.code_hash):
        return Verdict.ACCEPTED
    return Verdict.LOCKED_NOW if latest.tries + 1 >= rules.max_tries else Verdict.WRONG
