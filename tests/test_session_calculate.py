"""The bonus program and CalculateReceipt over real HTTP with zeep, on SQLite and on PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest
from sqlalchemy import func, select
from zeep.exceptions import Fault

from kkmtransfer.adapters.db import entries, operations
from kkmtransfer.domain import errors
from kkmtransfer.service_layer.program import ProgramService

from .helpers import new_id, op_dict

CARD = "S100"


def fault_code(excinfo) -> str:
    return excinfo.value.code.split(":")[-1]


def rows(db) -> tuple[int, int]:
    with db.engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(operations)).scalar_one(),
                conn.execute(select(func.count()).select_from(entries)).scalar_one())


@pytest.fixture
def card(db):
    db.add_card_range(100, 100, "S", 0, None)
    return CARD


@pytest.fixture
def program(db):
    """The hand-worked program: 5 %, from 10,000 7 %, from 50,000 10 %; half a line payable by bonus;
    TOBACCO excluded; ALCO earns 1 % and is payable up to 20 %."""
    svc = ProgramService(db)
    svc.set(accrual_percent="5", max_payment_percent="50", tiers=[(D(10000), D(7)), (D(50000), D(10))])
    svc.set_group("TOBACCO", excluded=True)
    svc.set_group("ALCO", accrual_percent="1", max_payment_percent="20")
    return svc


def lines(*spec):
    return [dict(LineNumber=n, Article=f"A{n}", Group=g, Quantity=D(q), Price=(D(s) / (D(q) or 1)).quantize(D("0.01")), Sum=D(s))
            for n, s, g, q in spec]


RECEIPT = [(1, "1000.00", None, "2"), (2, "333.33", "ALCO", "1"), (3, "500.00", "TOBACCO", "1")]


def calc(soap, card, spec=RECEIPT, when=None, **kw):
    return soap.service.CalculateReceipt(Receipt=dict(
        OperationId=new_id(), CardNumber=card, KKM="KKM-1", OperationTime=when or datetime.now(timezone.utc),
        Lines=dict(ReceiptLine=lines(*spec)), **kw))


def test_calculation_by_hand_worked_example(soap, card, program):
    # 1000 accrued at 5 % + 12,000 accumulated: the card is in the 7 % tier
    soap.service.RegisterOperation(Operation=op_dict(card, receipt_sum="12000.00", accrued="1000.00"))
    before = rows(program.billing)
    r = calc(soap, card, BonusToSpend=D("300.00"))
    assert rows(program.billing) == before  # writes nothing
    assert [(x.LineNumber, x.MaxBonusPayment, x.BonusSpent, x.BonusAccrued) for x in r.Lines.LineCalculation] == [
        (1, D("500.00"), D("264.71"), D("51.47")),
        (2, D("66.66"), D("35.29"), D("2.98")),
        (3, D("0.00"), D("0.00"), D("0.00"))]
    assert (r.MaxBonusPayment, r.BonusSpent, r.BonusAccrued) == (D("566.66"), D("300.00"), D("54.45"))
    assert r.Card.CardNumber == card and r.Card.BonusBalance == D("1000.00")
    assert "Будет начислено бонусов: 54,45" in r.Message and "до 566,66" in r.Message
    assert "К списанию: 300,00" in r.Message


def test_spend_capped_by_balance_and_whole_rounding(soap, card, program):
    soap.service.RegisterOperation(Operation=op_dict(card, receipt_sum="10.00", accrued="40.00"))
    r = calc(soap, card, BonusToSpend=D("300.00"))
    assert r.BonusSpent == D("40.00")
    assert sum(x.BonusSpent for x in r.Lines.LineCalculation) == D("40.00")
    assert all(x.BonusSpent <= x.MaxBonusPayment for x in r.Lines.LineCalculation)
    program.set(rounding="whole")
    r = calc(soap, card, BonusToSpend=D("300.00"))
    # base 5 %: (1000 - 35.29...) lines: 40 spread 500 : 66.66 -> 35.29 + 4.71; accrual 5 % of 964.71
    # = 48.2355, 1 % of 328.62 = 3.2862 -> 51.5217 -> whole: 51.00
    assert r.BonusAccrued == D("51.00")
    assert sum(x.BonusAccrued for x in r.Lines.LineCalculation) == D("51.00")


def test_a_program_change_does_not_alter_an_older_receipt(soap, card, program, clock):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    clock.set(now)
    program.set(accrual_percent="20", valid_from=now + timedelta(hours=1))
    before = calc(soap, card, spec=[(1, "100.00", None, "1")], when=now + timedelta(minutes=59))
    after = calc(soap, card, spec=[(1, "100.00", None, "1")], when=now + timedelta(hours=1))
    assert (before.BonusAccrued, after.BonusAccrued) == (D("5.00"), D("20.00"))
    # a change in the past is refused
    with pytest.raises(errors.ValidationError, match="in the past"):
        program.set(accrual_percent="3", valid_from=now - timedelta(seconds=1))


def test_promotion_percent(soap, card, program, db):
    db.add_promotion("X2", "double")
    program.set_promotion_percent("X2", "10")
    r = calc(soap, card, spec=[(1, "100.00", None, "1"), (2, "100.00", "ALCO", "1")], PromotionCode="X2")
    assert [x.BonusAccrued for x in r.Lines.LineCalculation] == [D("10.00"), D("1.00")]


def test_calculation_faults(soap, card, program, db):
    with pytest.raises(Fault) as e:
        calc(soap, card, spec=[(1, "1.00", None, "1"), (1, "2.00", None, "1")])
    assert fault_code(e) == "Client.ValidationError" and "LineNumber 1 appears twice" in e.value.message
    with pytest.raises(Fault) as e:
        calc(soap, "NOPE")
    assert fault_code(e) == "Client.CardNotFound"
    with pytest.raises(Fault) as e:
        calc(soap, card, PromotionCode="NOPE")
    assert fault_code(e) == "Client.ValidationError"
    with pytest.raises(Fault) as e:
        calc(soap, card, when=datetime(2026, 1, 1, 10, 0))  # no offset
    assert fault_code(e) == "Client.ValidationError"
    with pytest.raises(Fault) as e:
        calc(soap, card, spec=[(1, "1.00", None, "0")])
    assert fault_code(e) == "Client.ValidationError"


def test_without_a_program_nothing_is_accrued_and_all_may_be_paid(soap, card):
    soap.service.RegisterOperation(Operation=op_dict(card, receipt_sum="10.00", accrued="40.00"))
    r = calc(soap, card, spec=[(1, "30.00", None, "1")], BonusToSpend=D("100.00"))
    assert (r.MaxBonusPayment, r.BonusSpent, r.BonusAccrued) == (D("30.00"), D("30.00"), D("0.00"))


def test_wsdl_names_of_the_session():
    from pathlib import Path

    from lxml import etree

    ns = {"xs": "http://www.w3.org/2001/XMLSchema"}
    doc = etree.parse(str(Path(__file__).resolve().parent.parent / "wsdl" / "KKMTransfer.wsdl"))

    def sequence(type_name):
        [ct] = doc.xpath(f"//xs:complexType[@name='{type_name}']", namespaces=ns)
        return [e.get("name") for e in ct.findall("xs:sequence/xs:element", ns)]

    assert sequence("ReceiptLine") == ["LineNumber", "Article", "Group", "Quantity", "Price", "Sum"]
    assert sequence("Receipt") == ["OperationId", "CardNumber", "KKM", "Store", "OperationTime", "Lines",
                                   "PromotionCode", "BonusToSpend"]
    assert sequence("ReceiptCalculation") == ["OperationId", "Lines", "MaxBonusPayment", "BonusSpent",
                                              "BonusAccrued", "Message", "Card"]
    assert sequence("LineCalculation") == ["LineNumber", "MaxBonusPayment", "BonusSpent", "BonusAccrued"]
