"""The SOAP protocols' direct paths (kkmtransfer/soap/service.py) against spyne's own.

``KKMSoap11.complex_from_element`` builds a plain complex type itself and ``KKMSoap11Out.complex_to_parent``
writes one itself (docs/performance.md §5.5): each must give exactly what spyne's own code gives, the same
instance or the same fault, the same document. Both are compared here with a copy of the protocol whose
direct path is switched off, on requests and answers chosen to reach every branch (comments, attributes,
nil, repeated members, processing instructions, each kind of fault).
"""
from __future__ import annotations

import itertools
import random
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace

import pytest
from lxml import etree
from spyne import Application
from spyne.model.complex import ComplexModelBase

from kkmtransfer.soap import service as s

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


class _SpyneIn(s.KKMSoap11):
    def _plan(self, cls):
        members, limits, info, _template, names = super()._plan(cls)
        return members, limits, info, None, names  # no template: spyne's complex_from_element

    def _simple_reader(self, cls):
        return None  # spyne's from_element for every simple value


class _SpyneOut(s.KKMSoap11Out):
    def _out_plan(self, cls):
        return None  # spyne's complex_to_parent


def _app(in_protocol, out_protocol):
    return Application([s.KKMTransfer], tns=s.NS, name=s.SERVICE_NAME, in_protocol=in_protocol,
                       out_protocol=out_protocol)


@pytest.fixture(scope="module")
def apps():
    fast = _app(s.KKMSoap11(validator="soft"), s.KKMSoap11Out())
    slow = _app(_SpyneIn(validator="soft"), _SpyneOut())
    return fast, slow


def _descriptor(app, name):
    return app.interface.service_method_map[f"{{{s.NS}}}{name}"][0]


def _plain(value):
    if isinstance(value, ComplexModelBase):
        return (type(value).__name__, {k: _plain(v) for k, v in sorted(value.__dict__.items())})
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return (type(value).__name__, value)


def _read(app, cls, xml: str):
    element = etree.fromstring(xml)
    try:
        value = app.in_protocol.from_element(SimpleNamespace(app=app), cls, element)
    except Exception as exc:  # noqa: BLE001 - the fault or error itself is compared
        return ("raised", type(exc).__name__, getattr(exc, "faultcode", None), getattr(exc, "faultstring", str(exc)))
    return ("value", _plain(value))


LINE = ("<k:ReceiptLine><k:LineNumber>{n}</k:LineNumber><k:Article>A-{n}</k:Article><k:Group>G</k:Group>"
        "<k:Quantity>1.000</k:Quantity><k:Price>10.50</k:Price><k:Sum>10.50</k:Sum></k:ReceiptLine>")
MEMBERS = [
    "<k:OperationId>op-1</k:OperationId>", "<k:CardNumber>2000000000017</k:CardNumber>", "<k:KKM>KKM-1</k:KKM>",
    "<k:Store>S-1</k:Store>", "<k:ReceiptNumber>R-1</k:ReceiptNumber>",
    "<k:OperationTime>2026-11-23T10:15:00+03:00</k:OperationTime>", "<k:Kind>Sale</k:Kind>",
    "<k:ReceiptSum>1000.00</k:ReceiptSum>", "<k:BonusAccrued>50.00</k:BonusAccrued>",
    "<k:BonusSpent>20.00</k:BonusSpent>", "<k:AccumulationDelta>1000.00</k:AccumulationDelta>",
    "<k:ReceiptCountDelta>1</k:ReceiptCountDelta>", "<k:PromotionCode>P-1</k:PromotionCode>",
    "<k:OriginalOperationId>op-0</k:OriginalOperationId>",
    "<k:Lines>" + LINE.format(n=1) + "<!-- c -->" + LINE.format(n=2) + "</k:Lines>", "<k:SpendCode>1234</k:SpendCode>",
]
REQUIRED = MEMBERS[:3] + MEMBERS[5:8]
VARIANTS = {
    "the bench's sale": MEMBERS[:10],
    "every member": MEMBERS,
    "only the required": REQUIRED,
    "in another order": list(reversed(MEMBERS)),
    "comments and blanks": ["<!-- a -->", "\n  "] + [m + "<!-- b -->\n" for m in MEMBERS[:10]],
    "xsi:type on values (SOAP::Lite)": [m.replace("<k:KKM>", '<k:KKM xsi:type="xsd:string">')
                                        .replace("<k:ReceiptSum>", '<k:ReceiptSum xsi:type="xsd:decimal">')
                                        for m in MEMBERS[:10]],
    "an attribute named as a member": [m.replace("<k:Store>", '<k:Store KKM="other">') for m in MEMBERS[:10]],
    "an unrelated attribute": [m.replace("<k:Store>", '<k:Store lang="ru">') for m in MEMBERS[:10]],
    "nil optional": MEMBERS[:3] + ['<k:Store xsi:nil="true"/>'] + MEMBERS[5:10],
    "nil required": MEMBERS[:2] + ['<k:KKM xsi:nil="true"/>'] + MEMBERS[3:10],
    "empty optional": MEMBERS[:3] + ["<k:Store/>"] + MEMBERS[5:10],
    "empty required": MEMBERS[:2] + ["<k:KKM></k:KKM>"] + MEMBERS[3:10],
    "a processing instruction": MEMBERS[:3] + ["<?pi x?>"] + MEMBERS[3:10],
    "missing required": MEMBERS[1:10],
    "repeated member": MEMBERS[:10] + ["<k:Store>S-2</k:Store>"],
    "unknown member": MEMBERS[:10] + ["<k:Extra>1</k:Extra>"],
    "bad decimal": [m.replace("1000.00", "1E3") for m in MEMBERS[:10]],
    "negative sum": [m.replace("<k:ReceiptSum>1000.00", "<k:ReceiptSum>-1") for m in MEMBERS[:10]],
    "three fraction digits": [m.replace("50.00", "50.001") for m in MEMBERS[:10]],
    "bad kind": [m.replace(">Sale<", ">Gift<") for m in MEMBERS[:10]],
    "bad time": [m.replace("2026-11-23T", "2026-02-30T") for m in MEMBERS[:10]],
    "two errors (the first one in document order)": [m.replace(">Sale<", ">Gift<").replace("50.00", "x")
                                                     for m in MEMBERS[:10]],
    "bad line": MEMBERS[:10] + ["<k:Lines>" + LINE.format(n="x") + "</k:Lines>"],
    "blanks around values": [m.replace("<k:KKM>KKM-1", "<k:KKM> KKM-1\n").replace("<k:ReceiptSum>1000.00",
                                                                                 "<k:ReceiptSum> 1000.00\t")
                             .replace(">Sale<", "> Sale<") for m in MEMBERS],
    "decimal forms": [m.replace("50.00", "+50.").replace("20.00", ".5").replace("1000.00", "0001000")
                      for m in MEMBERS],
    "negative and zero": [m.replace("50.00", "-0").replace("<k:AccumulationDelta>1000.00", "<k:AccumulationDelta>-7.25")
                          for m in MEMBERS],
    "a long decimal": [m.replace("50.00", "1" * 40 + ".00") for m in MEMBERS[:10]],
    "a long text": [m.replace("KKM-1", "K" * 5000).replace("R-1", "Ж" * 300) for m in MEMBERS],
    "empty decimal": [m.replace("<k:BonusAccrued>50.00</k:BonusAccrued>", "<k:BonusAccrued/>") for m in MEMBERS[:10]],
    "empty kind": [m.replace(">Sale<", "><") for m in MEMBERS[:10]],
    "lower-case kind": [m.replace(">Sale<", ">sale<") for m in MEMBERS[:10]],
    "nil false": [m.replace("<k:Store>", '<k:Store xsi:nil="false">').replace("<k:BonusSpent>",
                                                                              '<k:BonusSpent xsi:nil="">')
                  for m in MEMBERS[:10]],
    "nil 0 on a required value": [m.replace("<k:KKM>", '<k:KKM xsi:nil="0">') for m in MEMBERS[:10]],
    "an entity reference": [m.replace("R-1", "R&amp;1&#x41;") for m in MEMBERS[:10]],
    "CDATA": [m.replace("KKM-1", "<![CDATA[KKM<1>]]>") for m in MEMBERS[:10]],
    "a child element in a value": [m.replace("KKM-1", "KKM<k:x>1</k:x>") for m in MEMBERS[:10]],
    "another namespace": [m.replace("<k:Store>", '<z:Store xmlns:z="urn:other">').replace("</k:Store>", "</z:Store>")
                          for m in MEMBERS[:10]],
}


def _operation(children, attrs: str = "") -> str:
    return (f'<k:Operation xmlns:k="{s.NS}" xmlns:xsi="{XSI}" xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
            f"{attrs}>{''.join(children)}</k:Operation>")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_operation_is_read_as_spyne_reads_it(apps, name):
    fast, slow = apps
    cls = _descriptor(fast, "RegisterOperation").in_message._type_info["Operation"]
    slow_cls = _descriptor(slow, "RegisterOperation").in_message._type_info["Operation"]
    for attrs in ("", ' lang="ru"'):
        xml = _operation(VARIANTS[name], attrs)
        assert _read(fast, cls, xml) == _read(slow, slow_cls, xml), xml


def test_the_direct_path_is_taken(apps):
    """The comparison above compares something: the plain types have a template and a writing plan."""
    fast, _ = apps
    desc = _descriptor(fast, "RegisterOperation")
    assert fast.in_protocol._plan(desc.in_message)[3] is not None
    operation = desc.in_message._type_info["Operation"]
    assert fast.in_protocol._plan(operation)[3] is not None
    for name in ("OperationId", "Store", "Kind", "ReceiptSum", "BonusAccrued", "AccumulationDelta"):
        assert fast.in_protocol._simple_reader(operation._type_info[name]) is not None, name
    assert fast.out_protocol._out_plan(desc.out_message) is not None
    assert fast.out_protocol._out_plan(s.OperationResult) is not None


def test_register_operation_message_is_read_as_spyne_reads_it(apps):
    fast, slow = apps
    for children in (MEMBERS[:10], MEMBERS[1:10]):
        xml = (f'<k:RegisterOperation xmlns:k="{s.NS}"><!-- x -->{_operation(children)}</k:RegisterOperation>')
        assert (_read(fast, _descriptor(fast, "RegisterOperation").in_message, xml)
                == _read(slow, _descriptor(slow, "RegisterOperation").in_message, xml))


def _card(rnd: random.Random) -> s.CardInfo:
    odd = [Decimal("1E+2"), Decimal("-0.00"), Decimal("0E-7"), Decimal("12.3400"), 5, "7.5"]  # as spyne writes them
    money = lambda: rnd.choice(odd) if rnd.random() < 0.2 else Decimal(rnd.randint(-10 ** 6, 10 ** 8)) / 100  # noqa: E731
    return s.CardInfo(
        CardNumber=rnd.choice(["2000000000017", "x&<>\"'", "карта", b"bytes"]), Status=rnd.choice(["Active", "Blocked"]),
        Holder=rnd.choice([None, "", "Иванов И.", "a & b <c>"]), BonusBalance=money(), BonusPending=money(),
        NextExpiryDate=rnd.choice([None, date(2027, 1, 31)]), NextExpiryAmount=money(), Accumulation=money(),
        AccumulationPending=rnd.choice([money(), None]), ReceiptCount=rnd.choice([rnd.randint(0, 2 ** 31 - 1), True, Decimal(3)]),
        ReceiptCountPending=rnd.choice([0, 7]))


def _write(app, cls, inst) -> bytes:
    parent = etree.Element(f"{{{SOAP_NS}}}Body", nsmap=app.interface.nsmap)
    app.out_protocol.to_parent(SimpleNamespace(app=app), cls, inst, parent, s.NS)
    return etree.tostring(parent)


def test_answers_are_written_as_spyne_writes_them(apps):
    fast, slow = apps
    rnd = random.Random(5)
    for i in range(300):
        result = s.OperationResult(
            OperationId=rnd.choice(["op-1", "ü&<x>"]), Status=rnd.choice(["Applied", "AlreadyApplied"]),
            Card=_card(rnd) if i % 50 else None,
            BonusAccrued=rnd.choice([None, Decimal("0.00"), Decimal("12.34")]),
            BonusSpent=rnd.choice([None, Decimal("5.00")]), Message=rnd.choice([None, "", "Начислено 1 & <2>"]))
        for app_cls in ("RegisterOperation",):
            out_fast = _descriptor(fast, app_cls).out_message
            out_slow = _descriptor(slow, app_cls).out_message
            wrapped_fast, wrapped_slow = out_fast(), out_slow()
            wrapped_fast.RegisterOperationResult = wrapped_slow.RegisterOperationResult = result
            assert _write(fast, out_fast, wrapped_fast) == _write(slow, out_slow, wrapped_slow)
        assert _write(fast, s.OperationResult, result) == _write(slow, s.OperationResult, result)
        card = result.Card or _card(rnd)
        assert _write(fast, s.CardInfo, card) == _write(slow, s.CardInfo, card)


def test_other_answers_are_written_as_spyne_writes_them(apps):
    fast, slow = apps
    rnd = random.Random(7)
    tz = timezone(timedelta(hours=3))
    records = [s.OperationRecord(OperationId=f"op-{i}", Time=datetime(2026, 11, 23, 10, i, tzinfo=tz), Kind="Sale",
                                 Source="online", KKM=rnd.choice([None, "KKM-1"]), ReceiptNumber=None,
                                 Bonus=Decimal("1.00"), Accumulation=Decimal("2.50"), ReceiptCount=1)
               for i in range(3)]
    for name, value in itertools.product(["GetCardOperations"], [records, [], None]):
        out_fast, out_slow = _descriptor(fast, name).out_message, _descriptor(slow, name).out_message
        key = next(iter(out_fast._type_info))
        a, b = out_fast(), out_slow()
        setattr(a, key, value)
        setattr(b, key, value)
        assert _write(fast, out_fast, a) == _write(slow, out_slow, b)
    for name in ("GetCardInfo", "FindCardByPhone"):
        out_fast, out_slow = _descriptor(fast, name).out_message, _descriptor(slow, name).out_message
        key = next(iter(out_fast._type_info))
        card = _card(rnd)
        a, b = out_fast(), out_slow()
        setattr(a, key, card)
        setattr(b, key, card)
        assert _write(fast, out_fast, a) == _write(slow, out_slow, b)


@pytest.mark.parametrize("cls", [s.CardInfo, s.OperationResult, s.OperationRecord])
def test_results_are_made_as_spyne_makes_them(cls):
    rnd = random.Random(11)
    names = list(cls.get_flat_type_info(cls))
    for _ in range(50):
        values = {k: rnd.choice([None, "x", Decimal("1.50"), 0]) for k in rnd.sample(names, rnd.randint(0, len(names)))}
        made, spynes = s._make(cls, **values), cls(**values)
        assert type(made) is cls and made.__dict__ == spynes.__dict__
    made, spynes = s._make(cls, NotAMember=1), cls(NotAMember=1)  # spyne ignores it; so must _make
    assert made.__dict__ == spynes.__dict__ and "NotAMember" not in made.__dict__
