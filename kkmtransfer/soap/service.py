"""The KKMTransfer SOAP service (spyne), exactly as ../shared/spec/CONTRACT.md says.

Only this package imports spyne. Methods translate SOAP values into the domain's ``OperationRequest``,
call the service layer and translate the result back; domain errors become the contract's faults.
"""
from __future__ import annotations

import logging
import re
from datetime import date, datetime
from decimal import Decimal as D

from spyne import Application, ComplexModel, ServiceBase, rpc
from spyne.const.xml import DEFAULT_NS
from spyne.model.complex import ComplexModelBase, XmlAttribute
from spyne.protocol.xml import E, _gen_tagname
from spyne import const as spyne_const
from lxml import etree
from spyne.error import Fault
from spyne.model import SimpleModel
from spyne.model.complex import Array
from spyne.model.primitive import Date, DateTime, Decimal, Integer32, Unicode
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication

from .. import metrics
from ..adapters.db import database_unavailable
from ..domain import errors
from ..domain.model import ApplyResult, CardView, OperationRequest, OperationView
from .spend_code import SPEND_CODE_FAULTS, SpendCodeField, SpendCodeResult, request_spend_code
from . import certificates as cert_soap

PRINCIPAL = "kkmtransfer.principal"  # WSGI environ key: the authenticated register user and its scope (http.py)

NS = "urn:kkmtransfer:1"
SERVICE_NAME = "KKMTransfer"

log = logging.getLogger("kkmtransfer.soap")

# spyne logs every client fault with a traceback: that is noise, a client fault is a normal answer.
# Server faults are logged by _call / KKMWsgiApplication with the request id; spyne's own copy would
# only repeat them (what spyne itself cannot handle it logs at CRITICAL, which still passes).
# spyne.protocol.*.invalid would log a malformed body whole (a megabyte a line, newlines and all).
for _name in ("spyne.application", "spyne.server._base", "spyne.application.client", "spyne.server.wsgi",
              "spyne.protocol.xml.invalid", "spyne.protocol.soap.soap11.invalid", "spyne.protocol.xml",
              "spyne.protocol.soap.soap11"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)

# spyne runs a full gc.collect() after a request at most once a second per process, to close the files of
# its File type (unused here): ~30 ms of CPU with the GIL held, a stall of every thread of the worker and
# the largest item of the online profile (docs/performance.md). Python's own collector is enough.
spyne_const.MIN_GC_INTERVAL = float("inf")


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


from .session import (  # noqa: E402 - the session's results carry the CardInfo above
    CancelResult,
    PositiveMoneyRequired,
    Receipt,
    ReceiptLines,
    ReceiptCalculation,
    ReservationResult,
    cancel_result,
    domain_lines,
    receipt_calculation,
    receipt_request,
    reservation_result,
)


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
        ("BonusAccrued", NonNegativeMoney),  # optional: with Lines the server calculates (Extensions A)
        ("BonusSpent", NonNegativeMoney),
        ("AccumulationDelta", Money),
        ("ReceiptCountDelta", Integer32(min_occurs=0)),
        ("PromotionCode", OptText),
        ("OriginalOperationId", OptText),
        ("Lines", ReceiptLines.customize(min_occurs=0)),
        ("SpendCode", SpendCodeField),
    ]


class OperationResult(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("OperationId", Text),
        ("Status", ApplyStatusType),
        ("Card", CardInfo.customize(min_occurs=1, nillable=False)),
        ("BonusAccrued", Money),
        ("BonusSpent", Money),
        ("Message", OptText),
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


_BLANKS: dict = {}  # a plain result type -> (its members, the __dict__ of cls()) or None


def _make(cls, **values):
    """``cls(**values)`` for a plain result type, without spyne's ``__init__`` (``_init_member`` for every
    member, then ``_safe_set`` for each value): the same instance, every member None and the given values
    set. A type whose fresh instance is not all None, has read-only members, or a value that is not a
    member: spyne's ``__init__``. Types are classes made at import (bounded all the same)."""
    try:
        blank = _BLANKS[cls]
    except KeyError:
        inst = cls()
        members = cls.get_flat_type_info(cls)
        plain = (cls.__init__ is ComplexModelBase.__init__ and cls._safe_set is ComplexModelBase._safe_set
                 and not any(m.Attributes.read_only for m in members.values())
                 and all(v is None for v in inst.__dict__.values()))
        blank = (frozenset(members), dict(inst.__dict__)) if plain else None
        if len(_BLANKS) < 4096:
            _BLANKS[cls] = blank
    if blank is None or not blank[0].issuperset(values):
        return cls(**values)
    inst = cls.__new__(cls)
    d = inst.__dict__
    d.update(blank[1])
    d.update(values)
    return inst


def card_info(view: CardView) -> CardInfo:
    b = view.balances
    return _make(
        CardInfo, CardNumber=view.number, Status=view.status.value, Holder=view.holder,
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
        lines=domain_lines(op.Lines), spend_code=op.SpendCode,
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
    except Exception as exc:
        from .http import printable

        log_failure(log, exc, "request %s (user %s): unexpected error", request_id,
                    printable(env.get("REMOTE_USER", "-")))
        raise Fault("Server", f"Internal server error; request id {request_id}")


def log_failure(logger: logging.Logger, exc: BaseException, message: str, *args) -> None:
    """A failed request in the log: one line when the database could not serve it (nothing for a developer
    to read in a traceback), the traceback for anything else (a bug). Call it in the ``except`` block."""
    reason = database_unavailable(exc)
    if reason is not None:
        logger.error(message + ": the database is unavailable: %s", *args, reason)
    else:
        logger.exception(message, *args)


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
            request = operation_request(Operation)
            svc.check_plausible_time(request)
            env = ctx.transport.req_env
            result: ApplyResult = svc.register_operation(request, actor=env.get("REMOTE_USER"),
                                                         spend_code=Operation.SpendCode,
                                                         principal=env.get(PRINCIPAL))
            if result.status == "Applied":
                metrics.record_applied(request.kind, "online")
            return _make(OperationResult, OperationId=result.operation_id, Status=result.status,
                         Card=card_info(result.card),
                         BonusAccrued=None if result.bonus_accrued is None else _q(result.bonus_accrued),
                         BonusSpent=None if result.bonus_spent is None else _q(result.bonus_spent),
                         Message=result.message)

        return _call(ctx, run)

    @rpc(Text, Date(min_occurs=1, nillable=False), Date(min_occurs=1, nillable=False),
         Integer32(min_occurs=0), OptText, _returns=Array(OperationRecord))
    def GetCardOperations(ctx, CardNumber, DateFrom, DateTo, MaxRecords, After):
        svc = ctx.app.billing
        tz = svc.settings.tz
        return _call(ctx, lambda: [operation_record(v, tz) for v in
                                   svc.card_operations(CardNumber, DateFrom, DateTo, MaxRecords, After)])

    @rpc(Receipt.customize(min_occurs=1, nillable=False), _returns=ReceiptCalculation)
    def CalculateReceipt(ctx, Receipt):
        from ..service_layer.program import ProgramService

        svc = ProgramService(ctx.app.billing)
        return _call(ctx, lambda: receipt_calculation(svc.calculate_receipt(receipt_request(Receipt))))

    @rpc(Text, Text, Text, PositiveMoneyRequired, OptText, _returns=ReservationResult)
    def ReserveBonus(ctx, OperationId, CardNumber, KKM, Amount, SpendCode):
        from ..service_layer.holds import HoldService

        svc = HoldService(ctx.app.billing)
        env = ctx.transport.req_env
        return _call(ctx, lambda: reservation_result(
            svc.reserve(OperationId, CardNumber, KKM, Amount, SpendCode, actor=env.get("REMOTE_USER"),
                        principal=env.get(PRINCIPAL)), svc.settings.tz))

    @rpc(Text, _returns=CancelResult)
    def CancelOperation(ctx, OperationId):
        from ..service_layer.holds import HoldService

        svc = HoldService(ctx.app.billing)
        env = ctx.transport.req_env
        return _call(ctx, lambda: cancel_result(svc.cancel(OperationId, actor=env.get("REMOTE_USER"),
                                                           principal=env.get(PRINCIPAL))))

    @rpc(Text, Text, _returns=SpendCodeResult)
    def RequestSpendCode(ctx, CardNumber, KKM):
        return _call(ctx, lambda: request_spend_code(ctx, CardNumber, KKM))
    # -- gift certificates (contract, Extensions C; types in certificates.py) --------------------
    @rpc(Text, OptText, _returns=cert_soap.CertificateInfo)
    def GetCertificateInfo(ctx, Number, Pin):
        svc = ctx.app.certificates
        return _call(ctx, lambda: cert_soap.certificate_info(svc.info(Number, Pin)))

    @rpc(cert_soap.CertificateOperation.customize(min_occurs=1, nillable=False),
         _returns=cert_soap.CertificateOperationResult)
    def RegisterCertificateOperation(ctx, Operation):
        svc = ctx.app.certificates
        env = ctx.transport.req_env
        return _call(ctx, lambda: cert_soap.register(svc, Operation, env.get("REMOTE_USER"), env.get(PRINCIPAL)))


CONTRACT_FAULTS = {
    "Client.CardNotFound", "Client.CardBlocked", "Client.InsufficientBonus", "Client.OperationConflict",
    "Client.OriginalNotFound", "Client.ReturnExceedsSale", "Client.ValidationError", "Client.AmbiguousPhone",
    "Client.HoldNotFound", "Client.HoldAlreadyConfirmed", "Server",
} | SPEND_CODE_FAULTS | cert_soap.CONTRACT_FAULTS


def _client_error(what: str, exc: Exception) -> Fault:
    return Fault("Client.ValidationError", f"{what}: {type(exc).__name__}: {exc}"[:500])


class NamedFault(Fault):
    """A validation fault that already names its element (not rewritten by outer elements)."""

    def __init__(self, string: str):
        super().__init__("Client.ValidationError", string)


# the lexical forms of XML Schema, in ASCII only: Python's int()/Decimal()/\d also take '1E2', '5_000',
# Arabic-Indic and full-width digits, which are not xs:decimal / xs:int
_LEXICAL = [  # most specific first: spyne's Integer32 is a Decimal, its Date a DateTime
    (Integer32, re.compile(r"[+-]?[0-9]+"), "an xs:int (ASCII digits with an optional sign)"),
    (Decimal, re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)"),
     "an xs:decimal (ASCII digits with an optional sign and decimal point)"),
    (Date, re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), "an xs:date (YYYY-MM-DD)"),
    (DateTime, re.compile(r"-?[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                          r"(Z|[+-][0-9]{2}:[0-9]{2})?"),
     "an xs:dateTime with a UTC offset (e.g. 2026-11-23T10:15:00+03:00)"),
]
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
# dates this service takes: Python's datetime overflows at the ends of 1..9999 once a zone is applied
MIN_YEAR, MAX_YEAR = 1900, 9998


def _element_name(element) -> str:
    """An element's local name, for a fault (computed only when one is raised)."""
    return etree.QName(element.tag).localname[:64]


def _got(text) -> str:
    text = "" if text is None else text.strip()
    return repr(text[:64] + ("…" if len(text) > 64 else ""))


_LEXICAL_OF: dict = {}  # spyne type -> its (pattern, what): the types are classes made once at import


def _lexical(cls):
    try:
        return _LEXICAL_OF[cls]
    except KeyError:
        pass
    found = next(((pattern, what) for base, pattern, what in _LEXICAL if issubclass(cls, base)), (None, None))
    if len(_LEXICAL_OF) < 4096:
        _LEXICAL_OF[cls] = found
    return found


def _rule_broken(name: str, cls, text) -> str:
    """What the element's own type allows, for the value that spyne refused."""
    a = cls.Attributes
    raw = (text or "").strip()
    values = getattr(a, "values", None)
    if values:
        return f"{name}: must be one of {', '.join(sorted(values))}, got {_got(raw)}"
    if issubclass(cls, Unicode):
        if getattr(a, "min_len", 0) and len(raw) < a.min_len:
            return f"{name}: must not be empty"
        if getattr(a, "max_len", None) is not None and len(text or "") > a.max_len:
            return f"{name}: at most {a.max_len} characters, got {len(text or '')}"
        return f"{name}: not a valid string"
    if issubclass(cls, Integer32):
        return f"{name}: must be an xs:int (-2147483648 … 2147483647), got {_got(raw)}"
    if issubclass(cls, Decimal):
        try:
            value = D(raw)
        except ArithmeticError:
            return f"{name}: must be an xs:decimal, got {_got(raw)}"
        if not value.is_finite():
            return f"{name}: must be a finite xs:decimal, got {_got(raw)}"
        ge = getattr(a, "ge", None)
        if ge is not None and not isinstance(ge, float) and value < ge:
            return f"{name}: must be ≥ {ge}, got {raw}"
        digits = getattr(a, "fraction_digits", None)
        if isinstance(digits, int) and -value.as_tuple().exponent > digits:
            return f"{name}: at most {digits} fraction digits, got {raw}"
        return f"{name}: out of range, got {_got(raw)}"
    pattern, what = _lexical(cls)
    if what:
        return f"{name}: must be {what}, got {_got(raw)}"
    return f"{name}: invalid value {_got(raw)}"


_MISS = object()  # a simple reader's "spyne would refuse this": its own path gives the fault


def _values_allow(values, nillable, value) -> bool:
    """spyne's SimpleModel.validate_native for enumerated values."""
    return values is None or len(values) == 0 or (value is None and nillable) or (
        value is not None and value in values)


def _unicode_reader(nillable, nullable, min_len, max_len, values, empty_is_none):
    """spyne's ``unicode_from_element`` with soft validation for a Unicode type without a pattern (see
    ``KKMSoap11._simple_reader``): validate_string (nillable, min_len ≤ len ≤ max_len), the text or '' (or
    None when empty and ``empty_is_none``), validate_native (nullable, values)."""
    def read(text):
        try:
            if not (nillable or text is not None):
                return _MISS
            if text is not None and not (min_len <= len(text) <= max_len):
                return _MISS
            value = "" if text is None else text
            if len(value) == 0 and empty_is_none:
                value = None
            if not (nullable or value is not None) or not _values_allow(values, nillable, value):
                return _MISS
            return value
        except Exception:  # noqa: BLE001 - anything odd: spyne's own path
            return _MISS
    return read


def _decimal_reader(nillable, nullable, max_str_len, attrs_max_str_len, values, empty_is_none, bounds):
    """spyne's ``base_from_element`` with soft validation for a Decimal type (see ``KKMSoap11._simple_reader``):
    validate_string (nillable, the text's length), ``from_unicode`` (None stays None; empty and
    ``empty_is_none``: None), ``decimal_from_unicode`` (the length again, ``D(text)``), validate_native
    (nullable, values, gt/ge/lt/le)."""
    gt, ge, lt, le = bounds

    def read(text):
        try:
            if not (nillable or text is not None):
                return _MISS
            if text is not None and not len(text) <= max_str_len:
                return _MISS
            if text is None or (len(text) == 0 and empty_is_none):
                value = None
            else:
                if attrs_max_str_len is not None and len(text) > attrs_max_str_len:
                    return _MISS
                value = D(text)
            if not (nullable or value is not None) or not _values_allow(values, nillable, value):
                return _MISS
            if value is not None and not (value > gt and value >= ge and value < lt and value <= le):
                return _MISS
            return value
        except Exception:  # noqa: BLE001 - D() refused it, a comparison failed: spyne's own path
            return _MISS
    return read


class _CachedAttrs:
    """spyne's ``get_cls_attrs`` (about 130 calls a sale, 50 a GetCardInfo) first logs a debug line whose
    arguments it computes anyway (the length of a WeakKeyDictionary), then looks the class up in that
    weak dictionary (a new weak reference per call). The same answers from a plain dict in front of it:
    spyne's models are classes made once at import; the dict is bounded all the same."""

    _ATTRS_MAX = 4096

    def get_cls_attrs(self, cls):
        try:
            return self._fast_attrs[cls]
        except KeyError:
            pass
        except AttributeError:
            self._fast_attrs = {}
        attrs = super().get_cls_attrs(cls)
        if len(self._fast_attrs) >= self._ATTRS_MAX:
            self._fast_attrs.clear()
        self._fast_attrs[cls] = attrs
        return attrs


class KKMSoap11Out(_CachedAttrs, Soap11):
    """spyne's SOAP 1.1 writer with the attribute cache above, and complex types written directly.

    spyne writes a complex type through two coroutines (``gen_members_parent``, ``_get_members_etree``) and,
    for each simple member, ``to_parent`` (the polymorphic target, the class's attributes, its handler) and
    ``modelbase_to_parent``. For a plain type (``_out_plan``) the same elements are made here with the same
    calls in the same order: the type's element by ``etree.SubElement``, each simple member with a value by
    ``E(tag)`` with ``to_unicode``'s text, appended; a member without a value, a complex member and
    anything else through spyne's ``to_parent`` as before. The answer is the same document."""

    def complex_to_parent(self, ctx, cls, inst, parent, ns, name=None, add_type=False, **kw):
        plan = self._out_plan(cls)
        if plan is None or add_type or kw or not isinstance(parent, etree._Element):
            return super().complex_to_parent(ctx, cls, inst, parent, ns, name, add_type, **kw)
        sub_name, sub_ns, members = plan
        if sub_name is not None:
            name = sub_name
        if name is None:
            name = cls.get_type_name()
        if sub_ns not in (None, DEFAULT_NS):
            ns = sub_ns
        inst = cls.get_serialization_instance(inst)
        elt = etree.SubElement(parent, _gen_tagname(ns, name), attrib={})
        to_unicode, to_parent = self.to_unicode, self.to_parent
        for key, member, m_ns, m_name, tag, simple, min_occurs, plain_type in members:
            try:
                value = getattr(inst, key, None)
            except Exception:  # as spyne's _get_members_etree
                value = None
            if value is None:
                if min_occurs > 0:
                    to_parent(ctx, member, None, elt, m_ns, m_name)
            elif simple:
                child = E(tag)
                # what spyne's handler answers for a value of its plain type: the string itself, str() of
                # a Decimal or an int (their "sanity checks" D(value), int(value) pass for these types)
                child.text = (value if plain_type is str else str(value)) if type(value) is plain_type \
                    else to_unicode(member, value)
                elt.append(child)
            else:
                to_parent(ctx, member, value, elt, m_ns, m_name)
        return None

    def _plain_text_type(self, cls):
        """str, Decimal or int when spyne's text of a value of exactly that type is the value itself (str) or
        its str() (Decimal, int): spyne's own unicode, decimal or integer handler with no format; else None."""
        attrs = self.get_cls_attrs(cls)
        if getattr(attrs, "str_format", None) is not None or getattr(attrs, "format", None) is not None:
            return None
        handler = self._to_unicode_handlers[cls]
        if handler == self.unicode_to_unicode:
            return str
        if handler == self.decimal_to_unicode:
            return D
        if handler == self.integer_to_unicode:
            return int
        return None

    def _out_plan(self, cls):
        """(sub_name, sub_ns, members) of a complex type written directly, or None for spyne's own writer:
        not polymorphic, no base type, spyne's ``get_serialization_instance``; each member (excluded ones
        left out, as spyne skips them) once at most, either simple with spyne's ``modelbase_to_parent`` as
        its handler and no sub-protocol (written here), or complex with a plan of its own. Computed once per
        class (bounded)."""
        try:
            return self._out_plans[cls]
        except KeyError:
            pass
        except AttributeError:
            self._out_plans = {}
        self._out_plans[cls] = None  # while computing (a type that contains itself: spyne's writer)
        plan = None
        cls_attrs = self.get_cls_attrs(cls)
        if (not self.polymorphic and getattr(cls, "__extends__", None) is None and cls_attrs.prot is None
                and getattr(cls.get_serialization_instance, "__func__", None)
                is ComplexModelBase.get_serialization_instance.__func__):
            members = []
            for key, member in cls._type_info.items():
                attrs = self.get_cls_attrs(member)
                if attrs.exc:
                    continue
                m_ns = member.Attributes.sub_ns
                if m_ns is None:
                    m_ns = cls.get_namespace()
                m_name = member.Attributes.sub_name
                if m_name is None:
                    m_name = key
                handler = self.serialization_handlers[member]
                simple = handler == self.modelbase_to_parent and attrs.prot is None
                nested = (handler == self.complex_to_parent and issubclass(member, ComplexModelBase)
                          and self._out_plan(member) is not None)
                if member.Attributes.max_occurs > 1 or not (simple or nested):
                    members = None
                    break
                members.append((key, member, m_ns, m_name, _gen_tagname(m_ns, m_name), simple,
                                member.Attributes.min_occurs, self._plain_text_type(member) if simple else None))
            if members is not None:
                plan = (cls_attrs.sub_name, cls_attrs.sub_ns, tuple(members))
        if len(self._out_plans) < 4096:
            self._out_plans[cls] = plan
        else:
            del self._out_plans[cls]
        return plan


class KKMSoap11(_CachedAttrs, Soap11):
    """SOAP 1.1 that refuses documents with a DTD (SOAP forbids them; no entity tricks get through), turns
    whatever spyne's parser raises on nonsense (an empty body, NaN, February 30) into a client fault, and
    writes validation faults that name the element and what it allows (``ReceiptSum: must be ≥ 0, got -100``).
    """

    def create_in_document(self, ctx, charset=None):
        try:
            super().create_in_document(ctx, charset)
        except Fault:
            raise
        except (StopIteration, ValueError, TypeError, ArithmeticError, AttributeError) as exc:
            raise _client_error("the request is not a SOAP document", exc)
        root = ctx.in_document[0]
        if root.getroottree().docinfo.doctype:
            raise Fault("Client.ValidationError", "a SOAP message must not contain a Document Type Declaration")

    def deserialize(self, ctx, message):
        try:
            return super().deserialize(ctx, message)
        except Fault:
            raise
        except (ValueError, TypeError, ArithmeticError, AttributeError) as exc:
            raise _client_error("a value in the request is invalid", exc)

    def from_element(self, ctx, cls, element):
        simple = issubclass(cls, SimpleModel)
        if simple and element.get(XSI_TYPE) is not None:
            # SOAP::Lite writes xsi:type="xsd:long" on every value: the element's own type decides
            prefix, _, _local = element.get(XSI_TYPE).rpartition(":")
            if element.nsmap.get(prefix or None) != XSD_NS:
                raise NamedFault(f"{_element_name(element)}: xsi:type {element.get(XSI_TYPE)[:64]!r} "
                                 "is not allowed here")
            del element.attrib[XSI_TYPE]
        nil_attr = element.get(XSI_NIL)
        nil = (nil_attr or "").strip() in ("1", "true")
        if simple and not nil:
            pattern, what = _lexical(cls)
            if pattern is not None and not pattern.fullmatch((element.text or "").strip(" \t\r\n")):
                raise NamedFault(f"{_element_name(element)}: must be {what}, got {_got(element.text)}")
            if nil_attr is None:
                read = self._simple_reader(cls)
                if read is not None:
                    value = read(element.text)
                    if value is not _MISS:
                        return value
        try:
            value = super().from_element(ctx, cls, element)
        except NamedFault:
            raise
        except Fault as exc:
            if not simple:
                raise
            if nil:
                raise NamedFault(f"{_element_name(element)}: must not be nil")
            raise NamedFault(_rule_broken(_element_name(element), cls, element.text)) from exc
        except (ValueError, TypeError, ArithmeticError, OverflowError) as exc:
            if not simple:
                raise
            raise NamedFault(_rule_broken(_element_name(element), cls, element.text)) from exc
        if isinstance(value, (date, datetime)) and not MIN_YEAR <= value.year <= MAX_YEAR:
            raise NamedFault(f"{_element_name(element)}: out of range: years {MIN_YEAR}…{MAX_YEAR} are allowed, "
                             f"got {_got(element.text)}")
        return value

    def _simple_reader(self, cls):
        """A function from an element's text to the value spyne's ``from_element`` gives for it, or ``_MISS``
        when spyne would refuse it (or anything is unusual), for a string (Unicode) or decimal type read by
        spyne's own handlers with soft validation: the same checks on the same attributes (spyne's
        ``validate_string``, ``from_unicode`` with ``empty_is_none``, the decimal's ``D()``, ``validate_native``
        with nullability, enumerated values and bounds), without spyne's dozen calls per check. On ``_MISS``
        the element goes through spyne's path, which gives the fault. For an element with no ``xsi:nil``
        (whatever its value: spyne's test is its truth) and no ``xsi:type`` (removed above). None: spyne's
        path always. Computed once per class (bounded)."""
        try:
            return self._readers[cls]
        except KeyError:
            pass
        except AttributeError:
            self._readers = {}
        read = None
        if self.validator is self.SOFT_VALIDATION:
            a, ca = cls.Attributes, self.get_cls_attrs(cls)
            handler, from_text = self.deserialization_handlers[cls], self._from_unicode_handlers[cls]
            if (handler == self.unicode_from_element and from_text == self.unicode_from_bytes
                    and cls.validate_string is Unicode.validate_string
                    and cls.validate_native is Unicode.validate_native
                    and a.pattern is None and getattr(a, "unicode_pattern", None) is None):
                read = _unicode_reader(a.nillable, a.nullable, a.min_len, a.max_len, a.values, ca.empty_is_none)
            elif (handler == self.base_from_element and from_text == self.decimal_from_unicode
                    and cls.validate_string is Decimal.validate_string
                    and cls.validate_native is Decimal.validate_native):
                read = _decimal_reader(a.nillable, a.nullable, a.max_str_len, ca.max_str_len, a.values,
                                       ca.empty_is_none, (a.gt, a.ge, a.lt, a.le))
        if len(self._readers) < 4096:
            self._readers[cls] = read
        return read

    def complex_from_element(self, ctx, cls, elt):
        """Each member's count first, so that the fault names it (``KKM: required``); unknown members
        are refused rather than dropped. Then the instance: for a plain type (see ``_plan``) read here,
        the same steps as spyne's ``complex_from_element`` in the same order (each child's ``from_element``
        in document order, lists for repeated members, read-only members skipped) without its per-call
        ``cls()`` (``_init_member`` for every member), its attribute scan and its second occurrence check
        (the one above refused whatever that would); anything unusual goes to spyne's own."""
        members, limits, info, template, names = self._plan(cls)
        counts: dict[str, int] = {}
        fast = template is not None
        for child in elt:
            tag = child.tag
            if not isinstance(tag, str):
                if fast and not isinstance(child, etree._Comment):
                    fast = False  # a processing instruction or an entity: spyne's own handling
                continue
            key = tag.rpartition("}")[2]  # the local name (what etree.QName(tag).localname gives)
            if key not in members:
                raise NamedFault(f"{key[:64]}: not an element of {cls.get_type_name()}; allowed: "
                                 f"{', '.join(members)}")
            counts[key] = counts.get(key, 0) + 1
            if fast and (tag.count("}") > 1 or (child.attrib and not names.isdisjoint(child.keys()))):
                fast = False  # a '}' in the namespace (spyne's key differs); an attribute named as a member
        for key, min_occurs, max_occurs in limits:
            n = counts.get(key, 0)
            if n < min_occurs:
                raise NamedFault(f"{key}: required")
            if n > max_occurs:
                raise NamedFault(f"{key}: at most {max_occurs} allowed, got {n}")
        if not fast or self.validator is not self.SOFT_VALIDATION:
            return super().complex_from_element(ctx, cls, elt)
        klass, values = template
        inst = klass.__new__(klass)
        inst.__dict__.update(values)
        from_element = self.from_element
        for child in elt:
            tag = child.tag
            if not isinstance(tag, str):
                continue  # a comment (anything else went to spyne's own above)
            key = tag.rpartition("}")[2]
            member, many, read_only = info[key]
            value = from_element(ctx, member, child)
            if many:
                known = getattr(inst, key, None)
                if known is None:
                    known = []
                known.append(value)
                value = known
            if not read_only:
                setattr(inst, key, value)
        return inst

    def _plan(self, cls):
        """A complex type's members, their (name, min_occurs, max_occurs) in order, each member's (type,
        repeated, read-only) and the template of a fresh instance: computed once per class (spyne's models
        are classes made at import; bounded all the same). The template is ``(class, its __dict__)`` of the
        instance spyne's ``get_deserialization_instance`` makes, when that is plain: spyne's own ``__init__``,
        ``_safe_set`` and ``get_deserialization_instance``, no tag-body, attribute or alternative-name members
        (so the element's own attributes are nothing to spyne), every initial value None (shared safely);
        otherwise None and spyne deserializes the type itself."""
        try:
            return self._plans[cls]
        except KeyError:
            pass
        except AttributeError:
            self._plans = {}
        members = cls.get_flat_type_info(cls)
        limits, info = [], {}
        for key, member in members.items():
            a = self.get_cls_attrs(member)
            limits.append((key, a.min_occurs, a.max_occurs))
            info[key] = (member, a.max_occurs > 1, bool(a.read_only))
        template = None
        klass = cls.__orig__ if cls.__orig__ is not None else cls
        plain = (
            klass.__init__ is ComplexModelBase.__init__
            and klass._safe_set is ComplexModelBase._safe_set
            and getattr(cls.get_deserialization_instance, "__func__", None)
            is ComplexModelBase.get_deserialization_instance.__func__
            and self.get_cls_attrs(cls)._xml_tag_body_as is None
            and not cls._type_info_alt
            and not any(issubclass(m, XmlAttribute) for m in members.values())
        )
        if plain:
            inst = cls.get_deserialization_instance(None)
            if type(inst) is klass and all(v is None for v in inst.__dict__.values()):
                template = (klass, dict(inst.__dict__))
        plan = (members, limits, info, template, frozenset(members))
        if len(self._plans) < 4096:
            self._plans[cls] = plan
        return plan


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
        p_ctx.transport.req_env["kkmtransfer.fault"] = getattr(error, "faultcode", "Server")  # for the metrics
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
    from ..service_layer.certificates import CertificateService

    app.certificates = CertificateService(billing) if billing is not None else None
    return KKMWsgiApplication(app)
