"""SOAP types and translation of the receipt session (CONTRACT.md, Extensions A): ReceiptLine,
CalculateReceipt, ReserveBonus, CancelOperation. The ``@rpc`` methods live in service.py."""
from __future__ import annotations

from decimal import Decimal as D

from spyne import ComplexModel
from spyne.model.complex import Array
from spyne.model.primitive import DateTime, Decimal, Integer32, Unicode

from ..domain import errors
from ..domain.program import ReceiptLine as DomainLine

NS = "urn:kkmtransfer:1"


def _named(base, name, **kw):
    return base(type_name=name, __namespace__=NS, **kw)


def _required(t):
    return t.customize(min_occurs=1, nillable=False, type_name=t.get_type_name(), __namespace__=NS)


def _q(value: D) -> D:
    return value.quantize(D("0.01"))


NonNegativeMoney = _named(Decimal, "NonNegativeMoney", fraction_digits=2, ge=0)
PositiveMoney = _named(Decimal, "PositiveMoney", fraction_digits=2, gt=0)
Quantity = _named(Decimal, "Quantity", fraction_digits=3, gt=0)
PositiveMoneyRequired = _required(PositiveMoney)
MoneyOut = _required(_named(Decimal, "Money", fraction_digits=2))
Text = _required(_named(Unicode, "NonEmptyString", min_len=1))
OptText = Unicode(min_occurs=0)
LineNumberType = _required(_named(Integer32, "LineNumber", ge=1))
Time = DateTime(min_occurs=1, nillable=False)


class ReceiptLine(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("LineNumber", LineNumberType),
        ("Article", Text),
        ("Group", OptText),
        ("Quantity", _required(Quantity)),
        ("Price", _required(NonNegativeMoney)),
        ("Sum", _required(NonNegativeMoney)),
    ]


ReceiptLines = Array(ReceiptLine, type_name="ArrayOfReceiptLine")


class Receipt(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("OperationId", Text),
        ("CardNumber", Text),
        ("KKM", Text),
        ("Store", OptText),
        ("OperationTime", Time),
        ("Lines", ReceiptLines.customize(min_occurs=1, nillable=False)),
        ("PromotionCode", OptText),
        ("BonusToSpend", NonNegativeMoney),
    ]


class LineCalculation(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("LineNumber", LineNumberType),
        ("MaxBonusPayment", MoneyOut),
        ("BonusSpent", MoneyOut),
        ("BonusAccrued", MoneyOut),
    ]


def domain_lines(lines) -> list[DomainLine]:
    """The SOAP lines as the domain's (validated); None or empty stays empty (the caller decides)."""
    out = []
    for line in lines or ():
        if line is None:
            raise errors.ValidationError("Lines: an empty ReceiptLine")
        out.append(DomainLine.build(line_number=line.LineNumber, article=line.Article, group=line.Group,
                                    quantity=line.Quantity, price=line.Price, sum=line.Sum))
    return out


def receipt_request(receipt):
    from ..service_layer.program import ReceiptRequest

    if receipt is None:
        raise errors.ValidationError("Receipt is required")
    return ReceiptRequest.build(operation_id=receipt.OperationId, card_number=receipt.CardNumber, kkm=receipt.KKM,
                                store=receipt.Store, operation_time=receipt.OperationTime,
                                lines=domain_lines(receipt.Lines), promotion_code=receipt.PromotionCode,
                                bonus_to_spend=receipt.BonusToSpend)


def line_calculations(calc) -> list[LineCalculation]:
    return [LineCalculation(LineNumber=x.line_number, MaxBonusPayment=_q(x.max_payment), BonusSpent=_q(x.spent),
                            BonusAccrued=_q(x.accrued)) for x in calc.lines]


# The results carry a CardInfo: service.py imports this module after it defines CardInfo.
from .service import CardInfo  # noqa: E402

Card = CardInfo.customize(min_occurs=1, nillable=False)


class ReceiptCalculation(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("OperationId", Text),
        ("Lines", Array(LineCalculation, type_name="ArrayOfLineCalculation").customize(min_occurs=1,
                                                                                        nillable=False)),
        ("MaxBonusPayment", MoneyOut),
        ("BonusSpent", MoneyOut),
        ("BonusAccrued", MoneyOut),
        ("Message", OptText),
        ("Card", Card),
    ]


ReservationStatusType = _required(_named(Unicode, "ReservationStatus", values=["Reserved", "AlreadyReserved"]))
CancelStatusType = _required(_named(Unicode, "CancelStatus", values=["Cancelled", "AlreadyCancelled"]))


class ReservationResult(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("OperationId", Text),
        ("Status", ReservationStatusType),
        ("Amount", MoneyOut),
        ("ExpiresAt", Time),
        ("Card", Card),
    ]


class CancelResult(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("OperationId", Text),
        ("Status", CancelStatusType),
        ("Card", Card),
    ]


def receipt_calculation(result) -> ReceiptCalculation:
    from .service import card_info

    calc = result.calculation
    return ReceiptCalculation(OperationId=result.operation_id, Lines=line_calculations(calc),
                              MaxBonusPayment=_q(calc.max_payment), BonusSpent=_q(calc.spent),
                              BonusAccrued=_q(calc.accrued), Message=result.message, Card=card_info(result.card))


def reservation_result(view, tz) -> ReservationResult:
    from .service import card_info

    return ReservationResult(OperationId=view.operation_id, Status=view.status, Amount=_q(view.amount),
                             ExpiresAt=view.expires_at.astimezone(tz), Card=card_info(view.card))


def cancel_result(view) -> CancelResult:
    from .service import card_info

    return CancelResult(OperationId=view.operation_id, Status=view.status, Card=card_info(view.card))
