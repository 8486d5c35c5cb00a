"""Back-office actions on many cards: a bonus credit ("Бонус-акция"), the zeroing of non-expiring
bonuses ("Обнуление бессрочных бонусов"), and cancelling either.

An action is recorded once with the cards it covers (``action_cards``) and one ledger operation per card
whose GUID is derived from the action and the card, so a crashed run, resumed by giving the same command
again, never touches a card twice. The action's id is derived from what it does (kind, amount, last date,
note, the selection), derived with the installation's secret (adapters/server_ids.py): the same command
given again, on any day, is the same action (it resumes, or answers that it is done). Cards are processed in batches of one transaction, with set-based SQL.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Callable

from sqlalchemy import (BigInteger, String, and_, bindparam, case, exists, func, insert, literal, or_, select,
                        text, type_coerce, update)
from sqlalchemy.exc import IntegrityError

from ..adapters.server_ids import IdTaken, engine_namespace, server_id, uuid5_many
from ..adapters.db import (Cents, UTCDateTime, action_cards, actions, cards, entries, is_postgresql, lots,
                           operations, pg_text_array)
from ..adapters.repository import CERTIFICATE_ACCOUNT
from ..domain import errors
from ..domain.ledger import CardLedger
from ..domain.model import ZERO, CardStatus, Kind, Measure, Role, Source, money
from ..domain.rules import day_start
from .card_range import check_range, range_condition
from .unit_of_work import UnitOfWork

CREDIT, ZERO_KIND = "credit", "zero"
RUNNING, DONE, CANCELLING, CANCELLED = "running", "done", "cancelling", "cancelled"
PENDING, SKIPPED = "pending", "skipped"
ZEROING_ROLE = "zeroing"


@dataclass
class ActionReport:
    action_id: str
    kind: str
    cards: int = 0
    done: int = 0
    skipped: int = 0
    amount: Decimal = ZERO
    resumed: bool = False
    already_done: bool = False
    dry_run: bool = False


@dataclass
class CancelReport:
    action_id: str
    cards: int = 0
    taken_back: Decimal = ZERO
    kept: Decimal = ZERO
    kept_by_card: list[tuple[str, Decimal]] = field(default_factory=list)
    already: bool = False  # cancelled before this call, or finished by another cancel running at the same time


class CancelBusy(errors.ValidationError):
    """Another cancel of the same action claimed it first (and is running now)."""


@dataclass(frozen=True)
class Selection:
    """Which cards: a range of numbers (see card_range), a list, or every active card."""

    first: str | None = None
    last: str | None = None
    numbers: tuple[str, ...] | None = None
    all_active: bool = False

    def __post_init__(self):
        given = sum([self.first is not None or self.last is not None, self.numbers is not None, self.all_active])
        if given != 1 or ((self.first is None) != (self.last is None)):
            raise errors.ValidationError("choose the cards one way: --from and --to, --cards FILE or --all-active")
        if self.numbers is not None and not self.numbers:
            raise errors.ValidationError("the list of cards is empty")
        if self.first is not None:
            check_range(self.first, self.last)

    def key(self) -> str:
        if self.all_active:
            return "all-active"
        if self.numbers is not None:
            digest = hashlib.sha256("\n".join(sorted(set(self.numbers))).encode()).hexdigest()[:16]
            return f"cards:{len(set(self.numbers))}:{digest}"
        return f"range:{self.first}..{self.last}"

    def condition(self):
        if self.all_active:
            return cards.c.status == CardStatus.ACTIVE.value
        not_certificate = cards.c.status != CERTIFICATE_ACCOUNT  # gift certificates' accounts are no cards
        if self.numbers is not None:
            return and_(cards.c.number.in_(bindparam("numbers", expanding=True)), not_certificate)
        return and_(range_condition(self.first, self.last), not_certificate)


class Actions:
    def __init__(self, billing, batch: int = 1000, progress: Callable[[int], None] | None = None):
        self.billing = billing
        self.engine = billing.engine
        self.tz = billing.settings.tz
        self.batch = batch
        self.progress = progress or (lambda n: None)
        self.postgres = is_postgresql(self.engine)

    # -- shared --------------------------------------------------------------------------------
    def _today(self) -> date:
        return self.billing.clock().astimezone(self.tz).date()

    def _action_id(self, **what) -> str:
        """What the action does, without the day it is given on: an action interrupted and given again
        on a later day resumes. Derived with the installation's secret (no register can take its ids)."""
        return server_id(engine_namespace(self.engine), "action", json.dumps(what, sort_keys=True, default=str))

    @staticmethod
    def _op_id(action_id: str, card: str, purpose: str = "") -> str:
        """A card's operation of the action: derived from the action's (secret-derived) id."""
        return str(uuid.uuid5(uuid.UUID(action_id), purpose + card))

    def _still(self, conn, action_id: str, batch: list[str], state: str) -> list[str]:
        """The cards of ``batch`` still in ``state``, read after the cards were locked: two runs of the
        same action at once never process a card twice."""
        return list(conn.execute(select(action_cards.c.card_number).where(
            action_cards.c.action_id == action_id, action_cards.c.state == state,
            action_cards.c.card_number.in_(batch)).order_by(action_cards.c.card_number)).scalars())

    def _lock(self, conn, numbers: list[str]) -> None:
        if self.postgres:  # in number order, so two batch jobs never deadlock each other
            conn.execute(select(cards.c.number).where(cards.c.number.in_(numbers))
                         .order_by(cards.c.number).with_for_update())

    def _batches(self, action_id: str, state: str):
        """The action's cards in ``state``, a batch at a time, in number order. Each read starts after the last
        card of the one before (through the primary key), so it does not scan the cards already done again."""
        after = ""
        while True:
            with UnitOfWork(self.engine) as uow:
                batch = list(uow.conn.execute(
                    select(action_cards.c.card_number)
                    .where(action_cards.c.action_id == action_id, action_cards.c.card_number > after,
                           action_cards.c.state == state)
                    .order_by(action_cards.c.card_number).limit(self.batch)).scalars())
            if not batch:
                return
            after = batch[-1]
            yield batch

    def _ops(self, conn, action_id, numbers, kind: Kind, purpose: str, note: str, **amounts) -> dict[str, str]:
        now = self.billing.clock()
        ids = {n: self._op_id(action_id, n, purpose) for n in numbers}
        taken = conn.execute(select(operations.c.id, operations.c.kind, operations.c.card_number)
                             .where(operations.c.id.in_(list(ids.values())))).first()
        if taken is not None:
            raise IdTaken(f"operation {taken.id} ({taken.kind}, card {taken.card_number}) holds the id of a card's "
                          f"operation of action {action_id}: run `kkmtransfer ledger verify` and report it")
        conn.execute(insert(operations), [dict(
            id=ids[n], card_number=n, kind=kind.value, source=Source.BACKOFFICE.value, kkm=None, store=None,
            receipt_number=None, operation_time=now, business_date=now.astimezone(self.tz).date(),
            content_hash=ids[n], receipt_sum=ZERO, bonus_accrued=amounts.get("accrued", ZERO), bonus_spent=ZERO,
            accumulation_delta=ZERO, receipt_count_delta=0, promotion_code=None,
            original_operation_id=amounts.get("original", {}).get(n), note=note[:500], created_at=now,
            document_id=None) for n in numbers])
        return ids

    def _count(self, action_id: str, state: str | None = None) -> int:
        with UnitOfWork(self.engine) as uow:
            stmt = select(func.count()).select_from(action_cards).where(action_cards.c.action_id == action_id)
            if state:
                stmt = stmt.where(action_cards.c.state == state)
            return uow.conn.execute(stmt).scalar_one()

    def get(self, action_id: str):
        with UnitOfWork(self.engine) as uow:
            row = uow.conn.execute(select(actions).where(actions.c.id == action_id)).mappings().first()
        if row is None:
            raise errors.ValidationError(f"no action {action_id}")
        return row

    def list(self):
        with UnitOfWork(self.engine) as uow:
            return [dict(r) for r in uow.conn.execute(select(actions).order_by(actions.c.created_at))
                    .mappings()]

    def _start(self, action_id: str, kind: str, selection_text: str, card_select, params: dict,
               values: dict, dry_run: bool) -> tuple[ActionReport | None, bool]:
        """Create the action and its cards, or find it again: (the report to answer, or None to go on; whether
        this call created the action, so that no card of it is done yet)."""
        now = self.billing.clock()
        with UnitOfWork(self.engine, write=True) as uow:
            row = uow.conn.execute(select(actions).where(actions.c.id == action_id)).mappings().first()
            if row is not None:
                if row["status"] in (CANCELLING, CANCELLED):
                    raise errors.ValidationError(f"action {action_id} was cancelled; give another --note")
                report = ActionReport(action_id, kind, cards=row["cards"], resumed=row["status"] == RUNNING,
                                      already_done=row["status"] == DONE, dry_run=dry_run)
                return (report if row["status"] == DONE or dry_run else None), False
            if dry_run:
                chosen = uow.conn.execute(select(func.count()).select_from(card_select.subquery()), params)
                return ActionReport(action_id, kind, cards=chosen.scalar_one(), dry_run=True), False
            try:
                uow.conn.execute(insert(actions).values(id=action_id, kind=kind, selection=selection_text[:500],
                                                        status=RUNNING, cards=0, created_at=now, **values))
            except IntegrityError:
                raise errors.ValidationError(f"action {action_id} is being started by another command right now: "
                                             "wait for it (or give the command again later to resume it)") from None
            chosen = card_select.subquery()
            # the action is new (its row was just inserted), so the rows inserted are all its cards
            total = uow.conn.execute(insert(action_cards).from_select(
                ["action_id", "card_number", "state"],
                select(literal(action_id, String), chosen.c.number, chosen.c.state)), params).rowcount
            uow.conn.execute(update(actions).where(actions.c.id == action_id).values(cards=total))
            if self.postgres:  # the planner must know this action's many rows, or it scans them all per batch
                uow.conn.exec_driver_sql("ANALYZE action_cards")
            uow.commit()
        return None, True

    def _finish(self, action_id: str, kind: str, resumed: bool) -> ActionReport:
        now = self.billing.clock()
        with UnitOfWork(self.engine, write=True) as uow:
            uow.conn.execute(update(actions).where(actions.c.id == action_id, actions.c.status == RUNNING)
                             .values(status=DONE, completed_at=now))
            by_state = uow.conn.execute(select(action_cards.c.state, func.count(),
                                               func.coalesce(func.sum(action_cards.c.amount), 0))
                                        .where(action_cards.c.action_id == action_id)
                                        .group_by(action_cards.c.state)).all()
            uow.commit()
        counts = {state: n for state, n, _ in by_state}
        moved = sum((Decimal(m) for _, _, m in by_state), Decimal(0))
        return ActionReport(action_id, kind, cards=sum(counts.values()), done=counts.get(DONE, 0),
                            skipped=counts.get(SKIPPED, 0), amount=Decimal(moved).quantize(Decimal("0.01")),
                            resumed=resumed)

    # -- bonus credit ----------------------------------------------------------------------------
    def credit(self, amount, selection: Selection, until: date | None = None, note: str | None = None,
               dry_run: bool = False) -> ActionReport:
        amount = money(amount, "--amount")
        if amount <= 0:
            raise errors.ValidationError("--amount must be above 0")
        if until is not None and until < self._today():
            raise errors.ValidationError(f"--until {until} is in the past")
        numbers = None if selection.numbers is None else sorted(set(n.strip() for n in selection.numbers))
        if numbers is not None:
            with UnitOfWork(self.engine) as uow:
                missing = [n for n in numbers if n not in uow.repo.existing_card_numbers(numbers)]
            if missing:
                raise errors.CardNotFound(f"{len(missing)} card(s) of the list do not exist, e.g. "
                                          f"{', '.join(missing[:10])}")
        action_id = self._action_id(kind=CREDIT, amount=str(amount), until=until, note=note or "",
                                    selection=selection.key())
        card_select = select(cards.c.number, _state_column()).where(selection.condition())
        started, created = self._start(action_id, CREDIT, f"credit {amount} to {selection.key()}", card_select,
                                       {"numbers": numbers} if numbers is not None else {},
                                       dict(amount=amount, until_date=until, note=note), dry_run)
        if started is not None:
            if dry_run:
                started.amount = amount * started.cards
            return started
        expires_at = day_start(until + timedelta(days=1), self.tz) if until else None
        text = note or f"bonus action {action_id}"
        resumed = not created and self._count(action_id, DONE) > 0
        if self.postgres:
            after = ""
            while (after := self._credit_batch_pg(action_id, after, amount, expires_at, text)) is not None:
                pass
        else:
            for batch in self._batches(action_id, PENDING):
                self._credit_batch(action_id, batch, amount, expires_at, text)
                self.progress(len(batch))
        return self._finish(action_id, CREDIT, resumed)

    def _credit_batch(self, action_id, batch, amount, expires_at, note):
        now = self.billing.clock()
        with UnitOfWork(self.engine, write=True) as uow:
            conn = uow.conn
            self._lock(conn, batch)
            batch = self._still(conn, action_id, batch, PENDING)
            if not batch:
                return
            debtors = set(conn.execute(select(lots.c.card_number).distinct().where(
                lots.c.card_number.in_(batch), lots.c.measure == Measure.BONUS.value, lots.c.remaining < 0)).scalars())
            plain = [n for n in batch if n not in debtors]
            ids = self._ops(conn, action_id, batch, Kind.ACTION, "", note, accrued=amount)
            if plain:  # one new lot and one entry per card, two statements for the whole batch
                plain_ids = [ids[n] for n in plain]
                conn.execute(insert(lots).from_select(
                    ["card_number", "measure", "remaining", "available_from", "expires_at", "created_at",
                     "origin_operation_id", "exclusive"],
                    select(operations.c.card_number, literal(Measure.BONUS.value, String),
                           type_coerce(operations.c.bonus_accrued, BigInteger),
                           literal(None, lots.c.available_from.type), literal(expires_at, lots.c.expires_at.type),
                           literal(now, lots.c.created_at.type), operations.c.id, literal(True, lots.c.exclusive.type))
                    .where(operations.c.id.in_(bindparam("ids", expanding=True)))), {"ids": plain_ids})
                conn.execute(insert(entries).from_select(
                    ["operation_id", "lot_id", "card_number", "measure", "role", "amount"],
                    select(lots.c.origin_operation_id, lots.c.id, lots.c.card_number, lots.c.measure,
                           literal(Role.CREDIT.value, String), type_coerce(lots.c.remaining, BigInteger))
                    .where(lots.c.origin_operation_id.in_(bindparam("ids", expanding=True)))), {"ids": plain_ids})
            for n in sorted(debtors):  # a debt is paid first: the ledger's own rules, card by card
                ledger = CardLedger(uow.repo.load_lots(n), now)
                ledger.credit(Measure.BONUS, amount, None, expires_at, exclusive=True)
                uow.repo.save_moves(n, ids[n], ledger.moves, now)
            conn.execute(update(action_cards).where(action_cards.c.action_id == action_id,
                                                    action_cards.c.card_number.in_(batch))
                         .values(state=DONE, amount=amount))
            uow.commit()

    def _credit_batch_pg(self, action_id, after, amount, expires_at, note) -> str | None:
        """PostgreSQL: the next batch after card ``after``, in one transaction of two statements whatever its
        size; answers the batch's last card (where the next one starts), None when no card is left.

        The first statement reads the action's next pending cards by keyset (through the primary key of
        ``action_cards``) and locks them in ``cards``, in number order. The second (its own snapshot, taken
        after the locks were granted, as ``lock_card_for`` does) keeps the cards still pending (another run
        of the same action may have done some while this one waited), finds which of them owe bonus, and
        writes the operations (ids derived in Python from the action, sent as an array), the new lots, their
        entries and the cards' progress; it answers the cards that owe bonus, which go through the ledger
        (``CardLedger``) card by card in the same transaction. An operation id held by another record fails
        the primary key: IdTaken, and the batch is rolled back."""
        now = self.billing.clock()
        with UnitOfWork(self.engine, write=True) as uow:
            conn = uow.conn
            locked = list(conn.execute(_PG_LOCK_NEXT, {"action": action_id, "after": after, "pending": PENDING,
                                                       "limit": self.batch}).scalars())
            if not locked:
                return None
            ids = _uuid5_many(action_id, locked)
            try:
                debtors = conn.execute(_PG_CREDIT, {  # the arrays as one text value each: see pg_text_array
                    "cards": pg_text_array(locked), "ids": pg_text_array(ids), "action": action_id,
                    "pending": PENDING, "kind": Kind.ACTION.value,
                    "source": Source.BACKOFFICE.value, "now": now, "day": now.astimezone(self.tz).date(),
                    "amount": amount, "note": note[:500], "expires": expires_at, "bonus": Measure.BONUS.value,
                    "role": Role.CREDIT.value, "done": DONE, "first": locked[0], "last": locked[-1]}).all()
            except IntegrityError as exc:  # the batch is rolled back with the unit of work
                if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) != "pk_operations":
                    raise
                raise IdTaken(f"an operation id of action {action_id} is held by another record "
                              f"({str(exc.orig).splitlines()[-1].strip()}): run `kkmtransfer ledger verify` "
                              "and report it") from None
            for n, op_id in debtors:  # a debt is paid first: the ledger's own rules, card by card
                ledger = CardLedger(uow.repo.load_lots(n), now)
                ledger.credit(Measure.BONUS, amount, None, expires_at, exclusive=True)
                uow.repo.save_moves(n, op_id, ledger.moves, now)
            uow.commit()
        self.progress(len(locked))
        return locked[-1]

    # -- zeroing ---------------------------------------------------------------------------------
    def zero(self, inactive_since: date, note: str | None = None, dry_run: bool = False) -> ActionReport:
        """Burn the live non-expiring bonuses of cards without a purchase (sale or return) on or after
        ``inactive_since``; dated bonuses are left alone."""
        now = self.billing.clock()
        action_id = self._action_id(kind=ZERO_KIND, inactive_since=inactive_since, note=note or "")
        purchases = select(operations.c.id).where(
            operations.c.card_number == cards.c.number,
            operations.c.kind.in_([Kind.SALE.value, Kind.RETURN.value]),
            operations.c.business_date >= inactive_since)
        card_select = select(cards.c.number, literal(PENDING, String).label("state")).where(
            ~exists(purchases), exists(select(lots.c.id).where(*_zeroable(now), lots.c.card_number == cards.c.number)))
        started, created = self._start(action_id, ZERO_KIND,
                                       f"zero non-expiring bonuses, inactive since {inactive_since}",
                                       card_select, {}, dict(inactive_since=inactive_since, note=note), dry_run)
        if started is not None:
            if dry_run:
                with UnitOfWork(self.engine) as uow:
                    started.amount = Decimal(uow.conn.execute(
                        select(func.coalesce(func.sum(type_coerce(lots.c.remaining, BigInteger)), 0))
                        .where(*_zeroable(now), lots.c.card_number.in_(card_select.with_only_columns(cards.c.number)))
                    ).scalar_one()).scaleb(-2)
            return started
        text = note or f"zeroing {action_id}: inactive since {inactive_since}"
        resumed = not created and self._count(action_id, DONE) > 0
        for batch in self._batches(action_id, PENDING):
            self._zero_batch(action_id, batch, text)
            self.progress(len(batch))
        return self._finish(action_id, ZERO_KIND, resumed)

    def _zero_batch(self, action_id, batch, note):
        now = self.billing.clock()
        with UnitOfWork(self.engine, write=True) as uow:
            conn = uow.conn
            self._lock(conn, batch)
            batch = self._still(conn, action_id, batch, PENDING)
            if not batch:
                return
            ids = self._ops(conn, action_id, batch, Kind.ZEROING, "", note)
            due = and_(*_zeroable(now), lots.c.card_number.in_(bindparam("cards", expanding=True)))
            conn.execute(insert(entries).from_select(
                ["operation_id", "lot_id", "card_number", "measure", "role", "amount"],
                select(operations.c.id, lots.c.id, lots.c.card_number, lots.c.measure, literal(ZEROING_ROLE, String),
                       -type_coerce(lots.c.remaining, BigInteger))
                .select_from(lots.join(operations, operations.c.card_number == lots.c.card_number))
                .where(due, operations.c.id.in_(bindparam("ids", expanding=True)))),
                {"cards": batch, "ids": list(ids.values())})
            conn.execute(update(lots).where(due).values(remaining=0), {"cards": batch})
            burnt = dict(conn.execute(select(entries.c.card_number, func.sum(entries.c.amount))
                                      .where(entries.c.operation_id.in_(list(ids.values())))
                                      .group_by(entries.c.card_number)).all())
            conn.execute(update(action_cards).where(action_cards.c.action_id == action_id,
                                                    action_cards.c.card_number == bindparam("n"))
                         .values(state=DONE, amount=bindparam("a")),
                         [{"n": n, "a": -burnt.get(n, ZERO)} for n in batch])
            uow.commit()

    # -- cancelling ------------------------------------------------------------------------------
    def cancel(self, action_id: str) -> CancelReport:
        """Reverse what an action did, card by card: a credit takes back what is left of it (the report
        lists what had been spent or had burnt), a zeroing gives the bonuses back to their lots."""
        row = self.get(action_id)
        if row["status"] == RUNNING:
            raise errors.ValidationError(f"action {action_id} has not finished: run it to the end first")
        now = self.billing.clock()
        if row["status"] == DONE:
            # claim the cancel with a conditional UPDATE: of two cancels given at once, one moves the action
            # to "cancelling", the other is told so and changes nothing
            with UnitOfWork(self.engine, write=True) as uow:
                claimed = uow.conn.execute(update(actions).where(actions.c.id == action_id, actions.c.status == DONE)
                                           .values(status=CANCELLING)).rowcount == 1
                uow.commit()
            if not claimed:
                raise CancelBusy(f"action {action_id} is being cancelled by another command right now: "
                                 "nothing changed by this one")
        # a cancel found "cancelling" resumes one that stopped half-way (or helps one still running): every
        # batch re-reads its cards' state under their locks, so no card is reversed twice
        for batch in self._batches(action_id, DONE):
            if row["kind"] == CREDIT:
                self._cancel_credit_batch(action_id, batch, now)
            else:
                self._cancel_zero_batch(action_id, batch, now)
            self.progress(len(batch))
        with UnitOfWork(self.engine, write=True) as uow:
            finished = uow.conn.execute(update(actions).where(actions.c.id == action_id, actions.c.status == CANCELLING)
                                        .values(status=CANCELLED, cancelled_at=now)).rowcount == 1
            result = uow.conn.execute(select(action_cards.c.card_number, action_cards.c.amount, action_cards.c.kept)
                                      .where(action_cards.c.action_id == action_id,
                                             action_cards.c.state == CANCELLED)
                                      .order_by(action_cards.c.card_number)).all()
            uow.commit()
        report = CancelReport(action_id, cards=len(result), already=not finished)
        for number, moved, kept in result:
            kept = kept or ZERO
            report.kept += kept
            report.taken_back += (moved or ZERO) - kept
            if kept:
                report.kept_by_card.append((number, kept))
        return report

    def _cancel_ops(self, conn, action_id, batch) -> tuple[dict[str, str], dict[str, str]]:
        """Lock the cards and write one Annulment per card; ({card: the action's operation},
        {the action's operation: its annulment})."""
        self._lock(conn, batch)
        batch[:] = self._still(conn, action_id, batch, DONE)  # another cancel may have reversed some meanwhile
        if not batch:
            return {}, {}
        originals = {n: self._op_id(action_id, n) for n in batch}
        ids = self._ops(conn, action_id, batch, Kind.ANNULMENT, "cancel/", f"cancel of action {action_id}",
                        original=originals)
        return originals, {originals[n]: ids[n] for n in batch}

    def _cancel_credit_batch(self, action_id, batch, now):
        with UnitOfWork(self.engine, write=True) as uow:
            conn = uow.conn
            credit_ops, cancel_of = self._cancel_ops(conn, action_id, batch)
            if not batch:
                return
            live = and_(lots.c.origin_operation_id.in_(list(credit_ops.values())), lots.c.remaining > 0,
                        or_(lots.c.expires_at.is_(None), lots.c.expires_at > now))
            left = conn.execute(select(lots.c.id, lots.c.card_number, lots.c.origin_operation_id, lots.c.remaining)
                                .where(live)).all()
            if left:
                conn.execute(insert(entries), [dict(operation_id=cancel_of[r.origin_operation_id], lot_id=r.id,
                                                    card_number=r.card_number, measure=Measure.BONUS.value,
                                                    role=Role.TAKEBACK.value, amount=-r.remaining) for r in left])
                conn.execute(update(lots).where(lots.c.id.in_([r.id for r in left])).values(remaining=0))
            taken = {r.card_number: r.remaining for r in left}
            moved = dict(conn.execute(select(action_cards.c.card_number, action_cards.c.amount).where(
                action_cards.c.action_id == action_id, action_cards.c.card_number.in_(batch))).all())
            conn.execute(update(action_cards).where(action_cards.c.action_id == action_id,
                                                    action_cards.c.card_number == bindparam("n"))
                         .values(state=CANCELLED, kept=bindparam("k")),
                         [{"n": n, "k": moved[n] - taken.get(n, ZERO)} for n in batch])
            uow.commit()

    def _cancel_zero_batch(self, action_id, batch, now):
        with UnitOfWork(self.engine, write=True) as uow:
            conn = uow.conn
            zero_ops, cancel_of = self._cancel_ops(conn, action_id, batch)
            if not batch:
                return
            burnt = conn.execute(select(entries.c.operation_id, entries.c.lot_id, entries.c.card_number,
                                        entries.c.amount)
                                 .where(entries.c.operation_id.in_(list(zero_ops.values())))).all()
            if burnt:
                conn.execute(insert(entries), [dict(operation_id=cancel_of[b.operation_id], lot_id=b.lot_id,
                                                    card_number=b.card_number, measure=Measure.BONUS.value,
                                                    role=Role.REFUND.value, amount=-b.amount) for b in burnt])
                for b in burnt:
                    conn.execute(update(lots).where(lots.c.id == b.lot_id)
                                 .values(remaining=lots.c.remaining + type_coerce(-b.amount, lots.c.remaining.type)))
            conn.execute(update(action_cards).where(action_cards.c.action_id == action_id,
                                                    action_cards.c.card_number.in_(batch))
                         .values(state=CANCELLED, kept=ZERO))
            uow.commit()


_pg_text_array = pg_text_array  # the actions' name for it (adapters.db)


def _uuid5_many(namespace: str, names: list[str]) -> list[str]:
    """``[str(uuid.uuid5(UUID(namespace), name)) ...]`` (what ``Actions._op_id`` derives), without building a
    UUID object per name: a batch's ids cost a third of the time."""
    return uuid5_many(uuid.UUID(namespace), "", names)


# the action's next pending cards after :after (a range of the primary key of action_cards), locked in number
# order (the index scan of pk_cards gives them in order; the array keeps the planner off a scan of all cards)
_PG_LOCK_NEXT = text("""
SELECT number FROM cards
WHERE number = ANY(ARRAY(SELECT card_number FROM action_cards
                         WHERE action_id = :action AND card_number > :after AND state = :pending
                         ORDER BY card_number LIMIT :limit))
ORDER BY number FOR UPDATE""")
# under those locks: the batch's cards still pending, whether each owes bonus; the writes; the debtors
_PG_CREDIT = text("""
WITH v AS (SELECT b.card, b.id, NOT EXISTS (SELECT 1 FROM lots l WHERE l.card_number = b.card
                                                              AND l.measure = :bonus AND l.remaining < 0) AS plain
           FROM unnest(CAST(:cards AS text[]), CAST(:ids AS text[])) AS b(card, id)
           JOIN action_cards ac ON ac.action_id = :action AND ac.card_number = b.card
           WHERE ac.state = :pending AND ac.card_number BETWEEN :first AND :last),  -- a range of the primary key
ops AS (INSERT INTO operations (id, card_number, kind, source, operation_time, business_date, content_hash,
                                receipt_sum, bonus_accrued, bonus_spent, accumulation_delta, receipt_count_delta,
                                note, created_at)
        SELECT id, card, :kind, :source, :now, :day, id, 0, :amount, 0, 0, 0, :note, :now FROM v),
new_lots AS (INSERT INTO lots (card_number, measure, remaining, available_from, expires_at, created_at,
                               origin_operation_id, exclusive)
             SELECT card, :bonus, :amount, NULL, :expires, :now, id, true FROM v WHERE plain
             RETURNING id, card_number, origin_operation_id, remaining),
credited AS (INSERT INTO entries (operation_id, lot_id, card_number, measure, role, amount)
             SELECT origin_operation_id, id, card_number, :bonus, :role, remaining FROM new_lots),
progress AS (UPDATE action_cards ac SET state = :done, amount = :amount FROM v
             WHERE ac.action_id = :action AND ac.card_number = v.card
               AND ac.card_number BETWEEN :first AND :last)
SELECT card, id FROM v WHERE NOT plain ORDER BY card""").bindparams(
    bindparam("now", type_=UTCDateTime()), bindparam("expires", type_=UTCDateTime()),
    bindparam("amount", type_=Cents()))


def _zeroable(now):
    """Live, non-expiring, positive bonus lots."""
    return (lots.c.measure == Measure.BONUS.value, lots.c.expires_at.is_(None), lots.c.remaining > 0,
            or_(lots.c.available_from.is_(None), lots.c.available_from <= now))


def _state_column():
    """An action covers active cards; a blocked card in a range or list is recorded as skipped."""
    return case((cards.c.status == CardStatus.ACTIVE.value, PENDING), else_=SKIPPED).label("state")
