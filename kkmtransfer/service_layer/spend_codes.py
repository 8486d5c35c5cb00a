"""SMS codes before spending bonuses: sending a code, checking it in the spend's own transaction.

Sending (``request_code``) is three short steps so that no database lock is held while the gateway
is called (up to 5 s): (1) under the card's row lock, decide (card, phone, ration), store the code's
hash as ``pending`` and commit - a concurrent request for the same card now sees it and is refused as
too frequent; (2) call the gateway once; (3) record the outcome. A failed send is marked ``failed`` and
does not count against the card's ration: the cashier can ask again as soon as the gateway is back.
A send that timed out after the request went out is ``uncertain``: it counts against the hourly
ration (an SMS may have gone out and been paid for) but not against the 60-second interval, and its code
works if it did arrive.

Checking (``check_spend``) runs inside the spend's transaction, under the card's row lock, before the
spend writes anything: the right code is marked used in that same transaction (a concurrent spend with
the same code waits for the lock and then finds it used); a wrong one raises a fault that carries its own
record (the try counted, the audit row) which ``keep_rejection`` writes and commits, because nothing else
was written yet.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..adapters.spend_code_repo import SpendCodeRepo
from ..domain import errors
from ..domain import spend_codes as rules_mod
from ..domain.model import CardStatus, required_text
from ..domain.spend_codes import (
    CodeRules,
    CodeStatus,
    Policy,
    SmsGatewayUnavailable,
    SpendCodeInvalid,
    SpendCodeLocked,
    SpendCodeRequired,
    SpendCodeTooFrequent,
    Verdict,
)
from .unit_of_work import UnitOfWork

log = logging.getLogger("kkmtransfer.spend_codes")

REQUEST, CHECK = "request", "check"


@dataclass(frozen=True)
class IssuedCode:
    card_number: str
    expires_at: datetime
    masked_phone: str


class SpendCodeService:
    def __init__(self, engine, settings, clock, provider=None):
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self.policy = Policy(settings.spend_code)
        self.rules = CodeRules(length=settings.spend_code_length, ttl_seconds=settings.spend_code_ttl_seconds)
        self._provider = provider
        self._key: bytes | None = settings.spend_code_secret.encode() if settings.spend_code_secret else None

    @property
    def provider(self):
        """The SMS provider (kkmtransfer.adapters.sms; imported on first use: `requests` is not needed by
        a server that never sends a code)."""
        if self._provider is None:
            from ..adapters.sms import provider_from_settings

            self._provider = provider_from_settings(self.settings)
        return self._provider

    # -- the key of the codes' hashes ------------------------------------------------------------
    def _stored_key(self, conn, create: bool) -> bytes | None:
        """The HMAC key: KKMTRANSFER_SPEND_CODE_SECRET, or one derived from the installation's secret (the
        one-row table server_secret, made on first use; ``create=False`` only reads it). Cached once the
        secret is known to be committed (see request_code)."""
        if self._key is not None:
            return self._key
        secret = SpendCodeRepo(conn).installation_secret(create)
        if secret is None:
            return None
        key = hmac.new(secret.encode(), b"kkmtransfer/spend-codes", hashlib.sha256).digest()
        if not create:
            self._key = key
        return key

    # -- sending a code ------------------------------------------------------------------------
    def request_code(self, card_number, kkm, who: str | None = None) -> IssuedCode:
        number = required_text(card_number, "CardNumber", 32)
        kkm = required_text(kkm, "KKM", 64)
        now = self.clock()
        with UnitOfWork(self.engine, write=True) as uow:
            codes = SpendCodeRepo(uow.conn)
            key = self._stored_key(uow.conn, create=True)

            def refuse(outcome: str, exc: errors.DomainError):
                codes.add_event(at=now, action=REQUEST, outcome=outcome, card_number=number, who=who, kkm=kkm,
                                detail=exc.message)
                uow.commit()
                log.info("spend code for card %s (register %s, user %s) refused: %s", number, kkm, who, exc.message)
                raise exc

            card = uow.repo.get_card(number, lock=True)
            if card is None:
                refuse("card_not_found", errors.CardNotFound(f"card {number} not found"))
            if card["status"] != CardStatus.ACTIVE.value:
                refuse("card_blocked", errors.CardBlocked(f"card {number} is blocked"))
            if not card["phone"]:
                refuse("no_phone", errors.ValidationError(
                    f"CardNumber: card {number} has no phone number, so no spend code can be sent; "
                    f"the holder's phone must be registered first (kkmtransfer cards set-phone)"))
            wait = rules_mod.wait_before_new_code(codes.codes_since(number, now - timedelta(hours=1)), now,
                                                  self.rules)
            if wait:
                refuse("too_frequent", SpendCodeTooFrequent(
                    f"a new spend code for card {number} can be sent in {wait} s (at most one a minute and "
                    f"{self.rules.per_hour} an hour); the last code sent is still valid until it expires"))
            code = rules_mod.generate_code(self.rules.length)
            expires_at = now + self.rules.ttl
            code_id = codes.insert_code(card_number=number, code_hash=rules_mod.code_hash(key, number, code),
                                        status=CodeStatus.PENDING.value, tries=0, created_at=now,
                                        expires_at=expires_at, kkm=kkm, requested_by=who)
            phone = card["phone"]
            uow.commit()
        if self.settings.spend_code_secret is None:
            self._key = key

        from ..adapters.sms import SmsError

        provider = self.provider
        failure: SmsError | None = None
        message_id = None
        try:
            message_id = provider.send(rules_mod.gateway_phone(phone),
                                       rules_mod.render_text(self.settings.sms_text, code))
        except SmsError as exc:
            failure = exc
        except Exception as exc:  # noqa: BLE001 - a provider's bug must not leave the code pending
            log.error("SMS provider %s failed unexpectedly: %s", provider.name, type(exc).__name__)
            failure = SmsError(f"the SMS provider failed: {type(exc).__name__}", uncertain=True)
        finally:
            del code

        done = self.clock()
        with UnitOfWork(self.engine, write=True) as uow:
            codes = SpendCodeRepo(uow.conn)
            if failure is None:
                codes.update_code(code_id, status=CodeStatus.ACTIVE.value, message_id=str(message_id)[:64])
                codes.supersede_older(number, code_id, done)
                codes.add_event(at=done, action=REQUEST, outcome="sent", card_number=number, code_id=code_id,
                                who=who, kkm=kkm, detail=f"{provider.name} message {message_id}")
            else:
                status = CodeStatus.UNCERTAIN if failure.uncertain else CodeStatus.FAILED
                codes.update_code(code_id, status=status.value,
                                  closed_at=None if failure.uncertain else done)
                if failure.uncertain:
                    codes.supersede_older(number, code_id, done)
                codes.add_event(at=done, action=REQUEST,
                                outcome="gateway_no_answer" if failure.uncertain else "gateway_error",
                                card_number=number, code_id=code_id, who=who, kkm=kkm,
                                detail=f"{provider.name}: {failure.reason}")
            uow.commit()
        if failure is not None:
            log.warning("spend code for card %s (register %s, user %s) not sent: %s: %s",
                        number, kkm, who, provider.name, failure.reason)
            raise SmsGatewayUnavailable(
                f"the SMS gateway is unavailable ({failure.reason}); no code was sent"
                + (" for sure" if failure.uncertain else "") + ", nothing was spent: try again or sell "
                "without spending bonuses")
        log.info("spend code for card %s sent by %s (register %s, user %s), valid until %s",
                 number, provider.name, kkm, who, expires_at.isoformat())
        return IssuedCode(card_number=number, expires_at=expires_at, masked_phone=rules_mod.mask_phone(phone))

    # -- checking a code in the spend's transaction --------------------------------------------
    def required(self, card) -> bool:
        return self.policy.required_for(card["spend_code_required"])

    def check_spend(self, conn, card, *, spend_code, operation_id: str, kkm: str | None, who: str | None,
                    now: datetime) -> None:
        """Call under the card's row lock, before the spend writes anything. A right code is used up in
        the caller's transaction; a missing or wrong one raises a fault with its record attached."""
        given = spend_code is not None and str(spend_code).strip() != ""
        if not given and not self.required(card):
            return
        number = card["number"]
        codes = SpendCodeRepo(conn)
        event = dict(at=now, action=CHECK, card_number=number, who=who, kkm=kkm, operation_id=operation_id)

        def reject(outcome: str, exc: errors.DomainError, code_id=None, count_try=None):
            def record(c):
                repo = SpendCodeRepo(c)
                if count_try is not None:
                    repo.count_try(code_id, lock=count_try, now=now)
                repo.add_event(**event, outcome=outcome, code_id=code_id, detail=exc.message)
            exc.spend_code_record = record
            raise exc

        if not given:
            why = ("the card has no phone number: register it first (kkmtransfer cards set-phone)"
                   if not card["phone"] else "ask for one with RequestSpendCode")
            reject("missing", SpendCodeRequired(f"card {number} needs an SMS code to spend bonuses: {why}"))
        try:
            entered = rules_mod.normalise_entered(spend_code, self.rules.length)
        except errors.ValidationError as exc:
            reject("malformed", SpendCodeInvalid(exc.message))
        latest = codes.latest(number)
        key = self._stored_key(conn, create=False)
        if key is None:
            latest = None
        code_id, stored = latest if latest else (None, None)
        verdict = rules_mod.judge(key or b"", number, entered, stored, now, self.rules)
        if verdict is Verdict.ACCEPTED:
            codes.update_code(code_id, status=CodeStatus.USED.value, used_operation_id=operation_id, closed_at=now)
            codes.add_event(**event, outcome="accepted", code_id=code_id)
            return
        if verdict is Verdict.WRONG:
            left = self.rules.max_tries - stored.tries - 1
            reject("wrong", SpendCodeInvalid(f"the spend code is wrong; {left} more "
                                             f"{'try' if left == 1 else 'tries'} before it is locked"),
                   code_id, count_try=False)
        if verdict is Verdict.LOCKED_NOW:
            reject("locked", SpendCodeLocked(f"the spend code was wrong {self.rules.max_tries} times and is "
                                             f"now locked: request a new code"), code_id, count_try=True)
        if verdict is Verdict.LOCKED:
            reject("was_locked", SpendCodeLocked("the spend code is locked after too many wrong tries: "
                                                 "request a new code"), code_id)
        if verdict is Verdict.EXPIRED:
            reject("expired", SpendCodeInvalid("the spend code has expired: request a new code"), code_id)
        if verdict is Verdict.USED:
            reject("used", SpendCodeInvalid("the spend code was already used for a spend: request a new code"),
                   code_id)
        reject("no_code", SpendCodeInvalid(f"no spend code was sent to card {number}: request one first"))

    def note_refused_spend(self, request, who: str | None, exc: errors.DomainError) -> None:
        """A receipt carrying a code was refused for a reason of its own (no bonus, blocked card, ...): the
        transaction rolled back, the code (if right) is still valid; the audit gets a row saying so."""
        try:
            with UnitOfWork(self.engine, write=True) as uow:
                SpendCodeRepo(uow.conn).add_event(
                    at=self.clock(), action=CHECK, outcome="spend_refused", card_number=str(request.card_number)[:32],
                    who=who, kkm=request.kkm, operation_id=request.operation_id,
                    detail=f"{exc.code}: {exc.message}; the code was not used up")
                uow.commit()
        except Exception:  # noqa: BLE001 - the audit row must not hide the register's real fault
            log.exception("could not record a refused spend of card %s", request.card_number)

    # -- the back office -------------------------------------------------------------------------
    def set_required(self, first: str, last: str | None, required: bool, actor: str | None = None) -> int:
        """Mark one card (``last`` None) or the cards first..last (as kkmtransfer.service_layer.card_range
        reads a range) as needing a code, or not; audited."""
        from . import audit

        with UnitOfWork(self.engine, write=True) as uow:
            changed = SpendCodeRepo(uow.conn).set_required(first, last, required)
            if last is None and not changed:
                raise errors.CardNotFound(f"card {first} not found")
            audit.record(uow.conn, actor, "cards.set-spend-code", first if last is None else f"{first}..{last}",
                         required=required, cards=changed)
            uow.commit()
        return changed

    def count_between(self, first: str, last: str) -> tuple[int, int]:
        with UnitOfWork(self.engine) as uow:
            return SpendCodeRepo(uow.conn).count_between(first, last)

    def events(self, since: datetime, until: datetime, card_number: str | None = None, limit: int = 1000):
        with UnitOfWork(self.engine) as uow:
            return [dict(r) for r in SpendCodeRepo(uow.conn).events(since, until, card_number, limit)]


def keep_rejection(conn, exc: BaseException, *, dry: bool = False) -> bool:
    """Write what a rejected spend code leaves behind (the try, the audit row) on ``conn``; True when there
    was something, and then the caller commits (the rejection was raised before the spend wrote anything).
    ``dry=True`` only tells whether ``exc`` is such a rejection."""
    record = getattr(exc, "spend_code_record", None)
    if record is None:
        return False
    if not dry:
        record(conn)
    return True


@contextlib.contextmanager
def keeping_rejections(uow):
    """``with UnitOfWork(engine, write=True) as uow, keeping_rejections(uow): ...``: when the block raises a
    spend-code rejection, its record (the wrong try, the audit row) is written and committed before the
    fault goes on. For every use case that spends (RegisterOperation, ReserveBonus): ``check_spend`` must
    come before the use case's first write."""
    try:
        yield
    except errors.DomainError as exc:
        if keep_rejection(uow.conn, exc):
            uow.commit()
        raise
