"""Holds: ReserveBonus, its confirmation by the Sale with the same OperationId, CancelOperation, and the
release of hung holds (by the periodic task or by hand).

A hold is bookkeeping on the same ledger, nothing beside it: an operation of kind Hold (with an id the
server derives from the installation's secret, which no register can send first) whose entries take the
amount from the card's live lots, earliest expiry first, exactly as a spend does, so the balance every
operation sees excludes it and the card's lock serialises it with every spend. Releasing gives the held
amount back to the lots it came from (each with its own expiry; a lot that burnt meanwhile burns it
again at once). Every change of a hold's status happens under the card's lock.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError, OperationalError

from ..adapters.program_repo import ProgramRepository
from ..adapters.server_ids import check_own, namespace, server_id
from ..domain import errors
from ..domain.ledger import CardLedger
from ..domain.model import (
    ZERO,
    CardStatus,
    CardView,
    Kind,
    OperationRequest,
    Role,
    Source,
    canonical_guid,
    money,
    optional_text,
    required_text,
)
from . import audit
from .credentials import Principal, principal_of
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

RESERVED, CONFIRMED, CANCELLED, RELEASED = "reserved", "confirmed", "cancelled", "released"


@dataclass(frozen=True)
class ReservationView:
    operation_id: str
    status: str  # Reserved / AlreadyReserved
    amount: object
    expires_at: datetime
    card: CardView


@dataclass(frozen=True)
class CancelView:
    operation_id: str
    status: str  # Cancelled / AlreadyCancelled
    card: CardView


def _hash(card: str, kkm: str, amount) -> str:
    return hashlib.sha256(f"{card}|{kkm}|{amount}".encode()).hexdigest()


def hold_operation_id(ns, op_id: str) -> str:
    """The ledger operation of the hold ``op_id``: an id derived from the installation's secret (its
    namespace ``ns``), which no register can compute and send first (adapters/server_ids)."""
    return server_id(ns, "hold", op_id)


def release(repo, hold, now: datetime, ledger: CardLedger | None = None) -> CardLedger:
    """Give back what the hold still holds; the moves are saved under the hold's operation. With
    ``ledger`` (the confirming sale's) the moves are planned there and the caller saves them."""
    prepo = ProgramRepository(repo.conn)
    sources = prepo.held_sources(hold["hold_operation_id"])
    own = ledger is None
    if own:
        ledger = CardLedger(repo.load_lots(hold["card_number"], [lot_id for lot_id, _ in sources]), now)
    by_id = {lot.id: lot for lot in ledger.lots}
    total = sum((amount for _, amount in sources), ZERO)
    ledger.refund([(by_id[lot_id], amount) for lot_id, amount in sources], total, role=Role.RELEASE)
    if own:
        repo.save_moves(hold["card_number"], hold["hold_operation_id"], ledger.moves, now)
    return ledger


def confirming(repo, request: OperationRequest):
    """The hold a Sale confirms (None when its OperationId names no hold), checked: same card, not above
    the hold. Call with the card locked."""
    hold = repo.hold_named(request.operation_id)  # read with the card's lock when it could be
    if hold is None:
        return None
    if request.kind is not Kind.SALE:
        raise errors.ValidationError(f"OperationId {request.operation_id} names a hold: only a Sale confirms it")
    if hold["card_number"] != request.card_number:
        raise errors.ValidationError(
            f"CardNumber {request.card_number}: the hold {request.operation_id} was made on card {hold['card_number']}")
    if request.bonus_spent > hold["amount"]:
        raise errors.ValidationError(f"BonusSpent {request.bonus_spent} is above the hold {hold['amount']} "
                                     f"of OperationId {request.operation_id}")
    return hold


def confirm(repo, hold, request: OperationRequest, ledger: CardLedger, now: datetime) -> int:
    """Plan the release of a still reserved hold into the sale's ledger (before the sale spends); returns
    how many of the ledger's moves belong to the hold (the caller saves them under the hold's operation)."""
    if hold["status"] == RESERVED:
        release(repo, hold, now, ledger)
    return len(ledger.moves)


def held_lot_ids(repo, hold) -> list[int]:
    if hold is None or hold["status"] != RESERVED:
        return []
    return [lot_id for lot_id, _ in ProgramRepository(repo.conn).held_sources(hold["hold_operation_id"])]


def mark_confirmed(repo, hold, now: datetime) -> None:
    ProgramRepository(repo.conn).settle_hold(hold["id"], CONFIRMED, now,
                                             "register" if hold["status"] == RESERVED else hold["settled_by"])


def _check_kkm(repo, actor: str | None, kkm: str, principal: Principal | None = None) -> None:
    """A register user bound to KKM codes works only for them (as for RegisterOperation): what it may post
    for from ``principal`` when the caller has it (the authenticated user of this request), else from its
    users row."""
    principal = principal_of(repo, actor or None, principal)
    if principal is not None and principal.kkms and kkm not in principal.kkms:
        raise errors.ValidationError(f"KKM {kkm!r} is not one of the registers user {principal.name} may post "
                                     f"for ({', '.join(principal.kkms)})")


class HoldService:
    def __init__(self, billing):
        self.billing = billing
        self.engine = billing.engine
        self.settings = billing.settings

    def _retrying(self, fn):
        for attempt in (1, 2):
            try:
                return fn()
            except IntegrityError:
                if attempt == 2:
                    raise
            except OperationalError as exc:
                if attempt == 2 or "deadlock" not in str(exc).lower():
                    raise
        raise AssertionError("unreachable")

    def _card(self, repo, number: str, *, lock: bool):
        card = repo.get_card(number, lock=lock)
        if card is None:
            raise errors.CardNotFound(f"card {number} not found")
        return card

    # -- ReserveBonus ------------------------------------------------------------------------------
    def reserve(self, operation_id, card_number, kkm, amount, spend_code=None, principal=None,
                actor: str | None = None) -> ReservationView:
        op_id = canonical_guid(operation_id)
        number = required_text(card_number, "CardNumber", 32)
        kkm = required_text(kkm, "KKM")
        if amount is None:
            raise errors.ValidationError("Amount is required")
        amount = money(amount, "Amount")
        if amount <= 0:
            raise errors.ValidationError(f"Amount: must be > 0, got {amount}")
        spend_code = optional_text(spend_code, "SpendCode")
        return self._retrying(lambda: self._reserve(op_id, number, kkm, amount, spend_code, actor, principal))

    def _existing(self, hold, content_hash: str, uow, now) -> ReservationView:
        if hold["content_hash"] != content_hash:
            raise errors.OperationConflict(f"OperationId {hold['id']} was already used for another hold")
        if hold["status"] == CONFIRMED:
            raise errors.HoldAlreadyConfirmed(f"the hold {hold['id']} is already confirmed by its sale")
        if hold["status"] != RESERVED:
            raise errors.OperationConflict(f"the hold {hold['id']} was {hold['status']}; reserve with a new OperationId")
        card = self._card(uow.repo, hold["card_number"], lock=False)
        return ReservationView(hold["id"], "AlreadyReserved", hold["amount"], hold["expires_at"],
                               self.billing._view(uow.repo, card, now))

    def _reserve(self, op_id, number, kkm, amount, spend_code, actor=None, principal=None) -> ReservationView:
        now = self.billing.clock()
        content_hash = _hash(number, kkm, amount)
        from .spend_codes import keeping_rejections

        with UnitOfWork(self.engine, write=True, fold=True) as uow, keeping_rejections(uow):
            repo = uow.repo
            # the card locked, its lots, and the operation and the hold of this id: one round trip (with the
            # transaction's BEGIN on PostgreSQL, adapters.pg_folded)
            existing, card, lots = repo.lock_card_for(number, op_id)
            _check_kkm(repo, actor, kkm, principal)
            if card is None:
                raise errors.CardNotFound(f"card {number} not found")
            hold = repo.hold_named(op_id)
            if hold is not None:
                return self._existing(hold, content_hash, uow, now)
            if existing is not None:
                raise errors.OperationConflict(f"OperationId {op_id} was already applied as an operation")
            if card["status"] != CardStatus.ACTIVE.value:
                raise errors.CardBlocked(f"card {number} is blocked")
            # the SMS code (KKMTRANSFER_SPEND_CODE) is checked and used up here, before the first write; the
            # sale that confirms the hold needs none
            self.billing.spend_codes.check_spend(uow.conn, card, spend_code=spend_code, operation_id=op_id,
                                                 kkm=kkm, who=actor, now=now)
            ledger = CardLedger(lots, now)
            ledger.spend(amount, role=Role.HOLD)
            ns = self.billing.id_namespace or namespace(uow.conn)
            ledger_id = hold_operation_id(ns, op_id)
            check_own(repo.get_operation(ledger_id), ledger_id, kind=Kind.HOLD.value)
            repo.insert_operation(
                id=ledger_id, card_number=number, kind=Kind.HOLD.value, source=Source.ONLINE.value, kkm=kkm,
                operation_time=now, business_date=now.astimezone(self.settings.tz).date(), content_hash=content_hash,
                receipt_sum=ZERO, bonus_accrued=ZERO, bonus_spent=amount, accumulation_delta=ZERO,
                receipt_count_delta=0, note=f"hold {op_id}", created_at=now,
                **({"actor": actor[:255]} if actor else {}))
            expires = now + timedelta(seconds=self.settings.hold_timeout)
            ProgramRepository(uow.conn).insert_hold(
                id=op_id, hold_operation_id=ledger_id, card_number=number, kkm=kkm, amount=amount,
                spend_code=None,  # a code is never stored in clear (it was checked above)
                content_hash=content_hash, status=RESERVED, created_at=now, expires_at=expires)
            # the last write: on PostgreSQL sent with the COMMIT (adapters.pg_folded)
            repo.save_moves(number, ledger_id, ledger.moves, now)
            view = self.billing._view(repo, card, now, ledger)
            uow.commit()
        self.billing.id_namespace = ns  # committed: stored for good
        return ReservationView(op_id, "Reserved", amount, expires, view)

    # -- CancelOperation and releases ----------------------------------------------------------------
    def cancel(self, operation_id, actor: str | None = None, principal: Principal | None = None) -> CancelView:
        op_id = canonical_guid(operation_id)
        return self._retrying(lambda: self._settle(op_id, CANCELLED, "register", actor, principal=principal))

    def release_by_hand(self, operation_id, actor: str | None = None) -> CancelView:
        op_id = canonical_guid(operation_id, "ID")
        return self._retrying(lambda: self._settle(op_id, RELEASED, "operator", actor, audited=True))

    def _settle(self, op_id: str, status: str, by: str, actor: str | None = None,
                audited: bool = False, principal: Principal | None = None) -> CancelView:
        now = self.billing.clock()
        with UnitOfWork(self.engine, write=True) as uow:
            repo, prepo = uow.repo, ProgramRepository(uow.conn)
            hold = prepo.get_hold(op_id)
            if hold is None:
                raise errors.HoldNotFound(f"no hold with OperationId {op_id}")
            if not audited:  # a register cancels only its own registers' holds
                _check_kkm(repo, actor, hold["kkm"], principal)
            card = self._card(repo, hold["card_number"], lock=True)
            hold = prepo.get_hold(op_id)  # again, now that the card is ours
            if hold["status"] == CONFIRMED:
                raise errors.HoldAlreadyConfirmed(f"the hold {op_id} is already confirmed by its sale")
            if hold["status"] != RESERVED:
                return CancelView(op_id, "AlreadyCancelled", self.billing._view(repo, card, now))
            ledger = release(repo, hold, now)
            prepo.settle_hold(op_id, status, now, by)
            if audited:
                audit.record(uow.conn, actor, "holds.release", op_id, card=hold["card_number"], amount=hold["amount"])
            view = self.billing._view(repo, card, now, ledger)
            uow.commit()
        log.info("hold %s %s by %s", op_id, status, by)
        return CancelView(op_id, "Cancelled", view)

    def release_hung(self, limit: int = 1000) -> int:
        """Release the holds whose time ran out (each in its own transaction); returns how many."""
        now = self.billing.clock()
        with UnitOfWork(self.engine) as uow:
            due = [h["id"] for h in ProgramRepository(uow.conn).holds_list(status=RESERVED, expired_before=now,
                                                                            limit=limit)]
        released = 0
        for op_id in due:
            try:
                if self._settle(op_id, RELEASED, "task").status == "Cancelled":
                    released += 1
            except errors.HoldAlreadyConfirmed:
                pass  # confirmed meanwhile
        return released

    def list(self, hung: bool = False):
        now = self.billing.clock()
        with UnitOfWork(self.engine) as uow:
            prepo = ProgramRepository(uow.conn)
            rows = prepo.holds_list(status=RESERVED, expired_before=now if hung else None)
        return [dict(r, age=now - r["created_at"]) for r in rows]
