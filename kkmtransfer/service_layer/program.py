"""The bonus program (versioned) and the calculation of a receipt by it (CalculateReceipt)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ..adapters.program_repo import ProgramRepository
from ..domain import errors
from ..domain.ledger import CardLedger
from ..domain.model import (
    ZERO,
    CardStatus,
    CardView,
    aware_utc,
    canonical_guid,
    money,
    optional_text,
    required_text,
)
from ..domain.program import (
    Calculation,
    GroupRule,
    Program,
    ProgramVersion,
    ReceiptLine,
    apply_change,
    calculate,
    check_lines,
    percent,
)
from . import audit
from .unit_of_work import UnitOfWork


@dataclass(frozen=True)
class ReceiptRequest:
    operation_id: str
    card_number: str
    kkm: str
    store: str | None
    operation_time: datetime
    lines: tuple[ReceiptLine, ...]
    promotion_code: str | None
    bonus_to_spend: Decimal

    @classmethod
    def build(cls, *, operation_id, card_number, kkm, operation_time, lines, store=None, promotion_code=None,
              bonus_to_spend=None) -> "ReceiptRequest":
        lines = tuple(lines or ())
        check_lines(lines)
        return cls(operation_id=canonical_guid(operation_id), card_number=required_text(card_number, "CardNumber", 32),
                   kkm=required_text(kkm, "KKM"), store=optional_text(store, "Store"),
                   operation_time=aware_utc(operation_time, "OperationTime"), lines=lines,
                   promotion_code=optional_text(promotion_code, "PromotionCode"),
                   bonus_to_spend=money(ZERO if bonus_to_spend is None else bonus_to_spend, "BonusToSpend"))


@dataclass(frozen=True)
class ReceiptCalculation:
    operation_id: str
    calculation: Calculation
    message: str
    card: CardView


def rub(value: Decimal) -> str:
    """1234.5 -> '1 234,50' (as a Russian cashier reads it)."""
    return f"{value:,.2f}".replace(",", " ").replace(".", ",")


def cashier_message(calc: Calculation, card: CardView, tz) -> str:
    b = card.balances
    parts = [f"Будет начислено бонусов: {rub(calc.accrued)}.",
             f"Можно оплатить бонусами: до {rub(min(calc.max_payment, max(b.bonus, ZERO)))} "
             f"(на карте {rub(b.bonus)})."]
    if calc.spent > 0:
        parts.append(f"К списанию: {rub(calc.spent)}.")
    parts += _expiry_note(b)
    return " ".join(parts)


def _expiry_note(b) -> list[str]:
    if b.next_expiry_date is not None and b.next_expiry_amount > 0:
        return [f"{b.next_expiry_date:%d.%m.%Y} сгорит {rub(b.next_expiry_amount)}."]
    return []


def operation_message(kind: str, accrued: Decimal, spent: Decimal, card: CardView, again: bool = False) -> str:
    """RegisterOperation's Message for the cashier (CONTRACT.md, OperationResult.Message): what the receipt
    accrued and spent (a Return: took back and gave back), the card's balance after it, what is deferred and
    what burns next, in the words of CalculateReceipt's message."""
    b = card.balances
    if kind == "Return":
        parts = [f"Возврат: снято бонусов {rub(accrued)}, возвращено на карту {rub(spent)}."]
    else:
        parts = [f"Начислено бонусов: {rub(accrued)}.", f"Списано бонусов: {rub(spent)}."]
    if again:
        parts.insert(0, "Чек уже был проведён, повторно не учтён.")
    parts.append(f"Баланс: {rub(b.bonus)}.")
    if b.bonus_pending > 0:
        parts.append(f"Ожидает начисления: {rub(b.bonus_pending)}.")
    return " ".join(parts + _expiry_note(b))


class ProgramService:
    def __init__(self, billing):
        self.billing = billing
        self.engine = billing.engine
        self.settings = billing.settings

    # -- reading ---------------------------------------------------------------------------------
    def versions(self) -> list[ProgramVersion]:
        with UnitOfWork(self.engine) as uow:
            return ProgramRepository(uow.conn).versions()

    def in_force(self, when: datetime | None = None) -> Program:
        when = when or self.billing.clock()
        with UnitOfWork(self.engine) as uow:
            v = ProgramRepository(uow.conn).version_at(when)
        return v.program if v else Program()

    # -- changing --------------------------------------------------------------------------------
    def _start(self, valid_from: datetime | None, now: datetime) -> datetime:
        if valid_from is None:
            return now
        start = aware_utc(valid_from, "--from")
        if start < now:
            raise errors.ValidationError(f"--from {valid_from.isoformat()} is in the past")
        return start

    def _change(self, valid_from, change: dict, note: str, actor: str | None = None) -> ProgramVersion:
        now = self.billing.clock()
        start = self._start(valid_from, now)
        with UnitOfWork(self.engine, write=True) as uow:
            repo = ProgramRepository(uow.conn)
            repo.lock_program()
            base = repo.version_at(start)
            program = apply_change(base.program if base else Program(), change)  # validates
            repo.insert_change(start, change, now, note[:500])
            audit.record(uow.conn, actor, "program.change", start.isoformat(), change=note)
            uow.commit()
        return ProgramVersion(start, program, now)

    def set(self, *, valid_from: datetime | None = None, accrual_percent=None, max_payment_percent=None,
            tiers=None, accrue_on_bonus_paid: bool | None = None, rounding: str | None = None,
            actor: str | None = None) -> ProgramVersion:
        """A new version from ``valid_from`` (default now; never in the past): the version in force then,
        with the values given changed. ``tiers``: [(accumulation, percent)] replaces the tiers."""
        values = dict(accrual_percent=None if accrual_percent is None else percent(accrual_percent, "--accrual-percent"),
                      max_payment_percent=None if max_payment_percent is None
                      else percent(max_payment_percent, "--max-payment-percent"),
                      tiers=None if tiers is None else tuple(tiers), accrue_on_bonus_paid=accrue_on_bonus_paid,
                      rounding=rounding)
        if all(v is None for v in values.values()):
            raise errors.ValidationError("nothing to change: give at least one option")
        change = {k: v for k, v in values.items() if v is not None}
        return self._change(valid_from, change, "set " + ", ".join(f"{k}={v}" for k, v in change.items()), actor)

    def set_group(self, name: str, *, valid_from: datetime | None = None, accrual_percent=None,
                  max_payment_percent=None, excluded: bool = False, remove: bool = False,
                  actor: str | None = None) -> ProgramVersion:
        name = required_text(name, "GROUP", 64)
        if remove and (excluded or accrual_percent is not None or max_payment_percent is not None):
            raise errors.ValidationError("--remove takes no other option")
        if excluded and (accrual_percent is not None or max_payment_percent is not None):
            raise errors.ValidationError("--excluded takes no percent: an excluded group earns nothing and "
                                         "cannot be paid by bonus")
        if not (remove or excluded) and accrual_percent is None and max_payment_percent is None:
            raise errors.ValidationError("give --accrual-percent and/or --max-payment-percent, --excluded or --remove")
        rule = None if remove else GroupRule(
            None if accrual_percent is None else percent(accrual_percent, "--accrual-percent"),
            None if max_payment_percent is None else percent(max_payment_percent, "--max-payment-percent"),
            excluded)
        return self._change(valid_from, {"groups": {name: rule}},
                            f"group {name}: " + ("removed" if rule is None else rule.describe()), actor)

    def set_promotion_percent(self, code: str, value, actor: str | None = None) -> None:
        pct = None if value is None else percent(value, "--accrual-percent")
        with UnitOfWork(self.engine, write=True) as uow:
            if not ProgramRepository(uow.conn).set_promotion_percent(code, pct):
                raise errors.ValidationError(f"unknown promotion {code}")
            audit.record(uow.conn, actor, "program.promotion", code, accrual_percent=str(pct) if pct else "")
            uow.commit()

    # -- CalculateReceipt ------------------------------------------------------------------------
    def calculate_receipt(self, request: ReceiptRequest) -> ReceiptCalculation:
        """Writes nothing: the program in force at the receipt's time, on the card as it is now."""
        now = self.billing.clock()
        self.billing.check_plausible_time(request)  # the window RegisterOperation keeps, refused here already
        with UnitOfWork(self.engine) as uow:
            card = uow.repo.get_card(request.card_number)
            if card is None:
                raise errors.CardNotFound(f"card {request.card_number} not found")
            if card["status"] != CardStatus.ACTIVE.value:
                raise errors.CardBlocked(f"card {request.card_number} is blocked")
            self.billing.check_card_existed(card, request.operation_time)
            ledger = CardLedger(uow.repo.load_lots(card["number"]), now)
            view = CardView(number=card["number"], status=CardStatus(card["status"]), holder=card["holder"],
                            balances=ledger.balances(self.settings.tz))
            calc = self.calculation(uow.conn, uow.repo, request.operation_time, request.lines,
                                    request.promotion_code, to_spend=request.bonus_to_spend,
                                    balance=view.balances.bonus, accumulation=view.balances.accumulation)
        return ReceiptCalculation(request.operation_id, calc, cashier_message(calc, view, self.settings.tz), view)

    def calculation(self, conn, repo, when: datetime, lines, promotion_code, *, to_spend, balance, accumulation,
                    strict: bool = False, is_sale: bool = True) -> Calculation:
        prepo = ProgramRepository(conn)
        version = prepo.version_at(when)
        promo_pct = None
        if promotion_code:
            promotion = repo.get_promotion(promotion_code)
            if promotion is None:
                raise errors.ValidationError(f"unknown PromotionCode {promotion_code!r}")
            if is_sale:
                promotion.check_valid_on(when.astimezone(self.settings.tz).date())
            promo_pct = prepo.promotion_percent(promotion_code)
        return calculate(version.program if version else Program(), lines, accumulation=accumulation,
                         to_spend=to_spend, balance=balance, promotion_percent=promo_pct, strict=strict)
