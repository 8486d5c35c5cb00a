"""SOAP types of gift certificates (contract, Extensions C) and their translation to and from the domain."""
from __future__ import annotations

from decimal import Decimal as D

from spyne import ComplexModel
from spyne.model.primitive import Date, DateTime, Decimal, Unicode

from ..domain import errors
from ..domain.certificates import FAULT_CODES, CertificateOperationRequest, CertificateView

NS = "urn:kkmtransfer:1"


def _required(t):
    return t.customize(min_occurs=1, nillable=False, type_name=t.get_type_name(), __namespace__=NS)


def _enum(name, values):
    return _required(Unicode(type_name=name, __namespace__=NS, values=values))


_Money = Decimal(type_name="Money", __namespace__=NS, fraction_digits=2)
_Text = _required(Unicode(type_name="NonEmptyString", __namespace__=NS, min_len=1))
_OptText = Unicode(min_occurs=0)

CertificateStatusType = _enum("CertificateStatus", ["Issued", "Active", "Redeemed", "Expired", "Blocked"])
CertificateKindType = _enum("CertificateKind", ["SingleUse", "MultiUse"])
CertificateOperationKindType = _enum("CertificateOperationKind", ["Sell", "Redeem", "Refund", "ReturnSale"])
PositiveMoney = _required(Decimal(type_name="PositiveMoney", __namespace__=NS, fraction_digits=2, gt=0))
_ApplyStatus = _enum("OperationStatus", ["Applied", "AlreadyApplied"])

CONTRACT_FAULTS = set(FAULT_CODES)


class CertificateInfo(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("Number", _Text),
        ("Status", CertificateStatusType),
        ("Kind", CertificateKindType),
        ("Nominal", _required(_Money)),
        ("Balance", _required(_Money)),
        ("ValidUntil", Date(min_occurs=0)),
    ]


class CertificateOperation(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("OperationId", _Text),
        ("Number", _Text),
        ("Pin", _OptText),
        ("KKM", _Text),
        ("Store", _OptText),
        ("ReceiptNumber", _OptText),
        ("OperationTime", DateTime(min_occurs=1, nillable=False)),
        ("Kind", CertificateOperationKindType),
        ("Amount", PositiveMoney),
        ("OriginalOperationId", _OptText),
    ]


class CertificateOperationResult(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("OperationId", _Text),
        ("Status", _ApplyStatus),
        ("Certificate", CertificateInfo.customize(min_occurs=1, nillable=False)),
    ]


def _q(value: D) -> D:
    return value.quantize(D("0.01"))


def certificate_info(view: CertificateView) -> CertificateInfo:
    return CertificateInfo(Number=view.number, Status=view.status, Kind=view.kind.value, Nominal=_q(view.nominal),
                           Balance=_q(view.balance), ValidUntil=view.valid_until)


def certificate_request(op: CertificateOperation) -> CertificateOperationRequest:
    if op is None:
        raise errors.ValidationError("Operation is required")
    return CertificateOperationRequest.build(
        operation_id=op.OperationId, number=op.Number, pin=op.Pin, kkm=op.KKM, store=op.Store,
        receipt_number=op.ReceiptNumber, operation_time=op.OperationTime, kind=op.Kind, amount=op.Amount,
        original_operation_id=op.OriginalOperationId)


def register(svc, op: CertificateOperation, actor: str | None = None, principal=None) -> CertificateOperationResult:
    request = certificate_request(op)
    svc.billing.check_plausible_time(request)  # online only, as for cards: at most N hours ahead
    result = svc.register(request, actor=actor, principal=principal)
    return CertificateOperationResult(OperationId=result.operation_id, Status=result.status,
                                      Certificate=certificate_info(result.certificate))
