"""The KKMTransfer SOAP service (spyne), exactly as ../shared/spec/CONTRACT.md says.

Only this package imports spyne. Methods translate SOAP values into the domain's ``OperationRequest``,
call the service layer and translate the result back; domain errors become the contract's faults.
"""
from __future__ import annotations

import logging
from decimal import Decimal as D

from spyne import Application, ComplexModel, ServiceBase, rpc
from lxml.builder import E
from spyne.error import Fault
from spyne.model.complex import Array
from spyne.model.primitive import Date, DateTime, Decimal, Integer32, Unicode
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication

from ..domain import errors
from ..domain.model import ApplyResult, CardView, OperationRequest, OperationView

NS = "urn:kkmtransfer:1"
SERVICE_NAME = "KKMTransfer"

log = logging.getLogger("kkmtransfer.soap")

# spyne logs every client fault with a traceback: that is noise, a client fault is a normal answer.
# Server faults are logged by _call / KKMWsgiApplication with the request id; spyne's own copy would
# only repeat them (what spyne itself cannot handle it logs at CRITICAL, which still passes).
for _name in ("spyne.application", "spyne.application.client", "spyne.server.wsgi"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)


def _named(base, name, **kw):
    """A named simple type of our namespace (spyne would otherwise invent a name per use)."""
    return base(type_name=name, __namespace__=NS, **kw)


def _required(t):
    return t.customize(min_occurs=1, nillable=False, type_name=t.get_type_name(), __namespace__=NS)


Money = _named(Decimal, "Money", fraction_digits=2)
NonNegativeMoney = _named(Decimal, "NonNegativeMoney", fraction_digits=2, ge=0)

MoneyRequired = _required(Money)

Text = _required(_named(Unicode, "NonEmptyString", min_len=1))
OptText = Unicode(min_occurs=0)
Int = Integer32(min_occurs=1, nillable=False)


def _enum(name, values):
    return _required(_named(Unicode, name, values=values))


CardStatusType = _enum("CardStatus", ["Active", "Blocked"])
KindType = _enum("OperationKind", ["Sale", "Return"])
ApplyStatusType = _enum("OperationStatus", ["Applied", "AlreadyApplied"])


class CardInfo(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("CardNumber", Text),
        ("Status", CardStatusType),
        ("Holder", OptText),
        ("BonusBalance", MoneyRequired),
        ("BonusPending", MoneyRequired),
        ("NextExpiryDate", Date(min_occurs=0)),
        ("NextExpiryAmount", MoneyRequired),
        ("Accumulation", MoneyRequired),
        ("AccumulationPending", MoneyRequired),
        ("ReceiptCount", Int),
        ("ReceiptCountPending", Int),
    ]


class Operation(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("OperationId", Text),
        ("CardNumber", Text),
        ("KKM", Text),
        ("Store", OptText),
        ("ReceiptNumber", OptText),
        ("OperationTime", DateTime(min_occurs=1, nillable=False)),
        ("Kind", KindType),
        ("ReceiptSum", _required(NonNegativeMoney)),
        ("BonusAccrued", _required(NonNegativeMoney)),
        ("BonusSpent", _required(NonNegativeMoney)),
        ("AccumulationDelta", Money),
        ("ReceiptCountDelta", Integer32(min_occurs=0)),
        ("PromotionCode", OptText),
        ("OriginalOperationId", OptText),
    ]


class OperationResult(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("OperationId", Text),
        ("Status", ApplyStatusType),
        ("Card", CardInfo.customize(min_occurs=1, nillable=False)),
    ]


class OperationRecord(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("OperationId", Text),
        ("Time", DateTime(min_occurs=1, nillable=False)),
        ("Kind", Text),
        ("Source", Text),
        ("KKM", OptText),
        ("ReceiptNumber", OptText),
        ("Bonus", MoneyRequired),
        ("Accumulation", MoneyRequired),
        ("ReceiptCount", Int),
    ]


def _q(value: D) -> D:
    return value.quantize(D("0.01"))


def card_info(view: CardView) -> CardInfo:
    b = view.balances
    return CardInfo(
        CardNumber=view.number, Status=view.status.value, Holder=view.holder,
        BonusBalance=_q(b.bonus), BonusPending=_q(b.bonus_pending),
        NextExpiryDate=b.next_expiry_date, NextExpiryAmount=_q(b.next_expiry_amount),
        Accumulation=_q(b.accumulation), AccumulationPending=_q(b.accumulation_pending),
        ReceiptCount=b.receipt_count, ReceiptCountPending=b.receipt_count_pending,
    )


def operation_request(op: Operation) -> OperationRequest:
    if op is None:
        raise errors.ValidationError("Operation is required")
    return OperationRequest.build(
        operation_id=op.OperationId, card_number=op.CardNumber, kkm=op.KKM, store=op.Store,
        receipt_number=op.ReceiptNumber, operation_time=op.OperationTime, kind=op.Kind,
        receipt_sum=op.ReceiptSum, bonus_accrued=op.BonusAccrued, bonus_spent=op.BonusSpent,
        accumulation_delta=op.AccumulationDelta, receipt_count_delta=op.ReceiptCountDelta,
        promotion_code=op.PromotionCode, original_operation_id=op.OriginalOperationId,
    )


def operation_record(view: OperationView, tz) -> OperationRecord:
    return OperationRecord(
        OperationId=view.operation_id, Time=view.time.astimezone(tz), Kind=view.kind, Source=view.source,
        KKM=view.kkm, ReceiptNumber=view.receipt_number, Bonus=_q(view.bonus),
        Accumulation=_q(view.accumulation), ReceiptCount=view.receipt_count,
    )


def _call(ctx, fn, *args):
    """Run a use case; domain errors become the contract's faults, anything else a bare Server fault."""
    env = ctx.transport.req_env
    request_id = env.get("kkmtransfer.request_id", "-")
    try:
        return fn(*args)
    except errors.DomainError as exc:
        raise Fault(exc.code, exc.message)
    except Fault:
        raise
    except Exception:
        log.exception("request %s (user %s): unexpected error", request_id, env.get("REMOTE_USER", "-"))
        raise Fault("Server", f"Internal server error; request id {request_id}")


class KKMTransfer(ServiceBase):
    @rpc(Text, _returns=CardInfo)
    def GetCardInfo(ctx, CardNumber):
        svc = ctx.app.billing
        return _call(ctx, lambda: card_info(svc.card_info(CardNumber)))

    @rpc(Text, _returns=CardInfo)
    def FindCardByPhone(ctx, Phone):
        svc = ctx.app.billing
        return _call(ctx, lambda: card_info(svc.find_by_phone(Phone)))

    @rpc(Operation.customize(min_occurs=1, nillable=False), _returns=OperationResult)
    def RegisterOperation(ctx, Operation):
        svc = ctx.app.billing

        def run():
            result: ApplyResult = svc.register_operation(operation_request(Operation),
                                                           actor=ctx.transport.req_env.get("REMOTE_USER"))
            return OperationResult(OperationId=result.operation_id, Status=result.status,
                                   Card=card_info(result.card))

        return _call(ctx, run)

    @rpc(Text, Date(min_occurs=1, nillable=False), Date(min_occurs=1, nillable=False),
         _returns=Array(OperationRecord))
    def GetCardOperations(ctx, CardNumber, DateFrom, DateTo):
        svc = ctx.app.billing
        tz = svc.settings.tz
        return _call(ctx, lambda: [operation_record(v, tz) for v in
                                   svc.card_operations(CardNumber, DateFrom, DateTo)])


CONTRACT_FAULTS = {
    "Client.CardNotFound", "Client.CardBlocked", "Client.InsufficientBonus", "Client.OperationConflict",
    "Client.OriginalNotFound", "Client.ReturnExceedsSale", "Client.ValidationError", "Client.AmbiguousPhone",
    "Server",
}


def _client_error(what: str, exc: Exception) -> Fault:
    return Fault("Client.ValidationError", f"{what}: {type(exc).__name__}: {exc}"[:500])


class KKMSoap11(Soap11):
    """SOAP 1.1 that refuses documents with a DTD (SOAP forbids them; no entity tricks get through), and
    turns whatever spyne's parser raises on nonsense (an empty body, NaN, February 30) into a client fault."""

    def create_in_document(self, ctx, charset=None):
        try:
            super().create_in_document(ctx, charset)
        except Fault:
            raise
        except (StopIteration, ValueError, TypeError, ArithmeticError) as exc:
            raise _client_error("the request is not a SOAP document", exc)
        root = ctx.in_document[0]
        if root.getroottree().docinfo.doctype:
            raise Fault("Client.ValidationError", "a SOAP message must not contain a Document Type Declaration")

    def deserialize(self, ctx, message):
        try:
            return super().deserialize(ctx, message)
        except Fault:
            raise
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise _client_error("a value in the request is invalid", exc)


class KKMSoap11Out(Soap11):
    """Writes ``<faultcode>`` as the contract's bare value (``Client.CardNotFound``), not prefixed."""

    def fault_to_parent(self, ctx, cls, inst, parent, ns, *args, **kwargs):
        subelts = [
            E("faultcode", inst.faultcode),
            E("faultstring", inst.faultstring),
            E("faultactor", inst.faultactor),
        ]
        return self._fault_to_parent_impl(ctx, cls, inst, parent, ns, subelts)


class KKMWsgiApplication(WsgiApplication):
    """Maps every fault to one of the contract's codes before it is written."""

    def handle_error(self, p_ctx, others, error, start_response):
        code = getattr(error, "faultcode", "Server") or "Server"
        if code not in CONTRACT_FAULTS:
            if code.startswith("Client"):
                error.faultcode = "Client.ValidationError"
            else:
                request_id = p_ctx.transport.req_env.get("kkmtransfer.request_id", "-")
                log.error("request %s: server fault %s: %s", request_id, code, getattr(error, "faultstring", ""))
                error.faultcode = "Server"
                error.faultstring = f"Internal server error; request id {request_id}"
        return super().handle_error(p_ctx, others, error, start_response)


def make_soap_app(billing) -> KKMWsgiApplication:
    app = Application(
        [KKMTransfer],
        tns=NS,
        name=SERVICE_NAME,
        in_protocol=KKMSoap11(validator="soft"),
        out_protocol=KKMSoap11Out(),
    )
    app.billing = billing
    return KKMWsgiApplication(app)
