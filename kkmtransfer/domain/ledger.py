"""How amounts move between an operation and a card's lots.

A card holds, per measure, lots: buckets with one start (``available_from``) and one end of life
(``expires_at``). A lot's ``remaining`` is the sum of the entries that moved amounts into and out of it.
A lot is *live* when its start has come and its end has not; the balance of a measure is the sum of
its live lots. A negative lot is a debt (a return took back more than was there); credits pay debts
first.

``CardLedger`` plans the moves of one operation in memory, on the lots of one card that the caller has
locked; the adapter then writes the planned entries and the lots' new ``remaining`` in the same
transaction. Nothing here knows about SQL, SOAP or HTTP.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Iterable, Sequence

from .errors import InsufficientBonus, ValidationError
from .model import MAX_BALANCE, ZERO, Balances, Lot, Measure, Role
from .rules import day_start


@dataclass(slots=True)
class Move:
    lot: Lot
    amount: Decimal  # signed: + into the lot, - out of it
    role: Role


# enum members as constants: in the per-row code a member's lookup (Role.CREDIT) is a descriptor call
_CREDIT, _CREDIT_DEFERRED, _EXPIRY = Role.CREDIT, Role.CREDIT_DEFERRED, Role.EXPIRY
_BONUS, _ACCUMULATION, _RECEIPT_COUNT = Measure.BONUS, Measure.ACCUMULATION, Measure.RECEIPT_COUNT


def _by_id(lot: Lot):
    return lot.id or 0


def spend_order(lot: Lot):
    """Earliest expiry first, non-expiring last; ties by age of the lot (new lots last)."""
    never = lot.expires_at is None
    return (never, 0.0 if never else lot.expires_at.timestamp(), lot.id if lot.id else float("inf"))


class CardLedger:
    def __init__(self, lots: Iterable[Lot], now: datetime):
        self.lots: list[Lot] = list(lots)
        self.now = now
        self.moves: list[Move] = []

    # -- reading ---------------------------------------------------------------------------
    def _of(self, measure: Measure) -> list[Lot]:
        return [lot for lot in self.lots if lot.measure is measure]

    def balance(self, measure: Measure) -> Decimal:
        return sum((lot.remaining for lot in self._of(measure) if lot.is_live(self.now)), ZERO)

    def pending(self, measure: Measure) -> Decimal:
        return sum((lot.remaining for lot in self._of(measure) if lot.is_pending(self.now)), ZERO)

    def balances(self, tz: tzinfo) -> Balances:
        """The card's balances now: per measure the live lots' sum (``balance``) and the pending ones'
        (``pending``), and the bonus that burns first (the earliest day, in ``tz``, on which live or pending
        bonus lots with something left expire). One pass over the lots (GetCardInfo's hot path)."""
        now = self.now
        sums = [ZERO] * 6  # live bonus, accumulation, receipt count; then the same pending
        burning: dict = {}
        for lot in self.lots:
            measure, start, end, remaining = lot.measure, lot.available_from, lot.expires_at, lot.remaining
            expired = end is not None and end <= now
            # the measure's slot by identity (a dict keyed by the enum would pay its Python-level hash)
            slot = 0 if measure is _BONUS else 1 if measure is _ACCUMULATION else 2 if measure is _RECEIPT_COUNT else -1
            if slot >= 0:
                if start is not None and start > now:  # pending
                    sums[slot + 3] += remaining
                elif not expired:  # live
                    sums[slot] += remaining
            if slot == 0 and end is not None and not expired and remaining > 0:
                day = end.astimezone(tz).date()
                burning[day] = burning.get(day, ZERO) + remaining
        next_day = min(burning) if burning else None
        bonus, acc, count, bonus_pending, acc_pending, count_pending = sums
        return Balances(bonus, bonus_pending, next_day, burning.get(next_day, ZERO), acc, acc_pending,
                        int(count), int(count_pending))

    # -- moving ----------------------------------------------------------------------------
    def _move(self, lot: Lot, amount: Decimal, role: Role) -> None:
        if amount == 0:
            return
        remaining = lot.remaining + amount
        if abs(remaining) > MAX_BALANCE:
            raise ValidationError(f"{lot.measure.value}: the card would hold more than {MAX_BALANCE} "
                                  f"(the ledger's limit); the operation is refused")
        lot.remaining = remaining
        self.moves.append(Move(lot, amount, role))

    def _bucket(self, measure: Measure, available_from, expires_at, exclusive: bool = False,
                mine: list[Lot] | None = None) -> Lot:
        if not exclusive:
            for lot in self._of(measure) if mine is None else mine:
                if lot.available_from == available_from and lot.expires_at == expires_at and not lot.exclusive:
                    return lot
        lot = Lot(id=None, measure=measure, remaining=ZERO,
                  available_from=available_from, expires_at=expires_at, exclusive=exclusive)
        self.lots.append(lot)
        return lot

    def spend(self, amount: Decimal, role: Role = Role.SPEND) -> None:
        """Spend bonuses: never more than the balance, from live lots, earliest expiry first."""
        if amount <= 0:
            return
        balance = self.balance(Measure.BONUS)
        if amount > balance:
            raise InsufficientBonus(f"BonusSpent {amount} is above the card's balance {balance}")
        left = amount
        for lot in sorted(self._of(Measure.BONUS), key=spend_order):
            if left == 0:
                break
            if lot.remaining > 0 and lot.is_live(self.now):
                take = min(lot.remaining, left)
                self._move(lot, -take, role)
                left -= take
        assert left == 0, "balance check and draws disagree"

    def credit(self, measure: Measure, amount: Decimal, available_from: datetime | None = None,
               expires_at: datetime | None = None, exclusive: bool = False) -> None:
        """Credit a measure. Debts (negative live lots) are paid first, the rest goes to its bucket (or,
        ``exclusive``, to a lot of its own)."""
        if amount <= 0:
            return
        mine = [lot for lot in self.lots if lot.measure is measure]
        total = sum([lot.remaining for lot in mine], ZERO)
        if total + amount > MAX_BALANCE:
            raise ValidationError(f"{measure.value}: the card would hold more than {MAX_BALANCE} "
                                  f"(the ledger's limit); the operation is refused")
        left = amount
        now = self.now
        if available_from is None or available_from <= now:
            # debts (negative lots) oldest first; paying one never makes another negative
            debts = [lot for lot in mine if lot.remaining < 0]
            if debts:
                for lot in sorted(debts, key=_by_id):
                    if left == 0:
                        break
                    if lot.is_live(now):
                        pay = min(-lot.remaining, left)
                        self._move(lot, pay, _CREDIT)
                        left -= pay
        if left > 0:
            lot = self._bucket(measure, available_from, expires_at, exclusive, mine)
            self._move(lot, left, _CREDIT_DEFERRED if lot.is_pending(now) else _CREDIT)
            if lot.expires_at is not None and lot.expires_at <= now:  # _burn_if_expired
                self._move(lot, -left, _EXPIRY)

    def _burn_if_expired(self, lot: Lot, amount: Decimal) -> None:
        """What lands in a lot that has already burnt (a late receipt's credit, a refund to a lot that
        expired meanwhile) burns in the same operation: the books never hold a live-looking burnt lot."""
        if lot.is_expired(self.now):
            self._move(lot, -amount, Role.EXPIRY)

    def take_back(self, measure: Measure, amount: Decimal, preferred: Sequence[Lot] = ()) -> None:
        """Take an accrued amount back: from the preferred lots (those the original operation credited,
        unless they have burnt meanwhile), then from live lots earliest expiry first, and what is not
        found anywhere becomes a debt."""
        if amount <= 0:
            return
        left = amount
        preferred_ids = {id(lot) for lot in preferred}
        ordered = [lot for lot in preferred if lot.measure is measure] + [
            lot for lot in sorted(self._of(measure), key=spend_order)
            if id(lot) not in preferred_ids and lot.is_live(self.now)
        ]
        for lot in ordered:
            if left == 0:
                break
            if lot.remaining > 0 and not lot.is_expired(self.now):
                take = min(lot.remaining, left)
                self._move(lot, -take, Role.TAKEBACK_DEFERRED if lot.is_pending(self.now) else Role.TAKEBACK)
                left -= take
        if left > 0:
            self._move(self._bucket(measure, None, None), -left, Role.DEBT)

    def refund(self, sources: Sequence[tuple[Lot, Decimal]], amount: Decimal, role: Role = Role.REFUND) -> None:
        """Give spent bonuses back to the lots they came from (the last drawn first), each keeping its
        own expiry. ``sources`` are (lot, amount still refundable) in the order the sale drew them."""
        left = amount
        for lot, refundable in reversed(sources):
            if left == 0:
                break
            give = min(refundable, left)
            if give > 0:
                self._move(lot, give, role)
                self._burn_if_expired(lot, give)
                left -= give
        if left > 0:  # the caller checks the limits; this would be a bug
            raise AssertionError(f"refund of {amount} exceeds what the sale drew")


def day_bounds(first_day, last_day, tz: tzinfo) -> tuple[datetime, datetime]:
    """[start of first_day, start of the day after last_day) in UTC, both days in the business zone."""
    return day_start(first_day, tz), day_start(last_day + timedelta(days=1), tz)
