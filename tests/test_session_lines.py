"""Receipts with lines over real HTTP with zeep, on SQLite and on PostgreSQL: a Sale's accrual
calculated from its lines, line-level partial returns that add up to the kopeck, and the errors a
register can make (each a precise fault that writes nothing)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest
from sqlalchemy import func, select
from zeep.exceptions import Fault

from kkmtransfer.adapters.db import entries, operations, receipt_lines
from kkmtransfer.service_layer.program import ProgramService

from .helpers import new_id

CARD = "L100"


def fault_code(excinfo) -> str:
    return excinfo.value.code.split(":")[-1]


def rows(db):
    with db.engine.connect() as conn:
        return tuple(conn.execute(select(func.count()).select_from(t)).scalar_one()
                     for t in (operations, entries, receipt_lines))


@pytest.fixture
def card(db, soap):
    db.add_card_range(100, 100, "L", 0, None)
    svc = ProgramService(db)
    svc.set(accrual_percent="5", max_payment_percent="50")
    svc.set_group("TOBACCO", excluded=True)
    return CARD


def line(n, s, qty="1", group=None, article=None):
    return dict(LineNumber=n, Article=article or f"A{n}", Group=group, Quantity=D(qty),
                Price=(D(s) / D(qty)).quantize(D("0.01")), Sum=D(s))


def sale(card, lines, op_id=None, when=None, **kw):
    total = sum(D(x["Sum"]) for x in lines)
    return dict(OperationId=op_id or new_id(), CardNumber=card, KKM="KKM-1",
                OperationTime=when or datetime.now(timezone.utc), Kind="Sale", ReceiptSum=total,
                Lines=dict(ReceiptLine=lines), **kw)


def ret(card, original, lines, receipt_sum, **kw):
    return dict(OperationId=new_id(), CardNumber=card, KKM="KKM-1", OperationTime=datetime.now(timezone.utc),
                Kind="Return", ReceiptSum=D(receipt_sum), OriginalOperationId=original,
                Lines=dict(ReceiptLine=lines), **kw)


def test_a_sale_with_lines_gets_its_accrual_calculated(soap, card, db):
    r = soap.service.RegisterOperation(Operation=sale(card, [line(1, "333.33"), line(2, "100.00", group="TOBACCO")]))
    # 5 % of 333.33 = 16.6665 -> 16.66; tobacco earns nothing
    assert (r.Status, r.BonusAccrued, r.BonusSpent, r.Card.BonusBalance) == ("Applied", D("16.66"), D("0.00"),
                                                                              D("16.66"))
    # spend 10.00 on the next: it falls on line 1 (tobacco cannot be paid by bonus); accrual on the rest
    op = sale(card, [line(1, "200.00"), line(2, "100.00", group="TOBACCO")], BonusSpent=D("10.00"))
    r = soap.service.RegisterOperation(Operation=op)
    assert (r.BonusAccrued, r.BonusSpent, r.Card.BonusBalance) == (D("9.50"), D("10.00"), D("16.16"))
    again = soap.service.RegisterOperation(Operation=op)
    assert (again.Status, again.BonusAccrued) == ("AlreadyApplied", D("9.50"))
    with db.engine.connect() as conn:
        kept = conn.execute(select(receipt_lines).where(receipt_lines.c.operation_id == op["OperationId"])
                            .order_by(receipt_lines.c.line_number)).mappings().all()
    assert [(x["line_number"], x["max_payment"], x["bonus_spent"], x["bonus_accrued"]) for x in kept] == [
        (1, D("100.00"), D("10.00"), D("9.50")), (2, D("0.00"), D("0.00"), D("0.00"))]


def test_given_accrual_must_agree_and_spend_must_fit_the_lines(soap, card, db):
    soap.service.RegisterOperation(Operation=sale(card, [line(1, "1000.00")]))  # 50.00
    before = rows(db)
    cases = [
        (sale(card, [line(1, "100.00")], BonusAccrued=D("5.01")), "disagrees with the program"),
        (sale(card, [line(1, "100.00"), line(2, "100.00", group="TOBACCO")], BonusSpent=D("50.01")),
         "above what the lines may be paid"),
        (sale(card, [line(1, "100.00"), line(1, "5.00")]), "LineNumber 1 appears twice"),
    ]
    for op, text in cases:
        with pytest.raises(Fault) as e:
            soap.service.RegisterOperation(Operation=op)
        assert fault_code(e) == "Client.ValidationError" and text in e.value.message, e.value.message
    assert rows(db) == before
    r = soap.service.RegisterOperation(Operation=sale(card, [line(1, "100.00")], BonusAccrued=D("5.00")))
    assert r.BonusAccrued == D("5.00")


def test_three_partial_returns_never_take_back_more_than_the_line_had(soap, card, db):
    soap.service.RegisterOperation(Operation=sale(card, [line(1, "5000.00")]))  # 250.00 to spend
    op = sale(card, [line(1, "100.00", qty="3"), line(2, "50.00")], BonusSpent=D("70.00"))
    r = soap.service.RegisterOperation(Operation=op)
    # maxima 50.00 and 25.00: 70 -> 46.66 + 23.33 = 69.99, +0.01 to line 1: 46.67 / 23.33
    # accrual 5 % of 53.33 = 2.6665 and of 26.67 = 1.3335: 4.00 -> 2.66 / 1.34 (the kopeck to line 1)
    assert (r.BonusAccrued, r.BonusSpent) == (D("4.00"), D("70.00"))
    with db.engine.connect() as conn:
        kept = {x["line_number"]: x for x in conn.execute(select(receipt_lines).where(
            receipt_lines.c.operation_id == op["OperationId"])).mappings()}
    line1 = kept[1]
    balance = soap.service.GetCardInfo(card).BonusBalance

    taken_accrued, given_spent = D("0.00"), D("0.00")
    for i in range(3):
        rr = soap.service.RegisterOperation(Operation=ret(card, op["OperationId"], [line(1, "33.33", qty="1")],
                                                          "33.33"))
        taken_accrued += rr.BonusAccrued
        given_spent += rr.BonusSpent
        assert rr.BonusAccrued <= line1["bonus_accrued"] and rr.BonusSpent <= line1["bonus_spent"]
    assert (taken_accrued, given_spent) == (line1["bonus_accrued"], line1["bonus_spent"])
    assert soap.service.GetCardInfo(card).BonusBalance == balance - taken_accrued + given_spent
    # nothing is left of line 1
    before = rows(db)
    with pytest.raises(Fault) as e:
        soap.service.RegisterOperation(Operation=ret(card, op["OperationId"], [line(1, "1.00", qty="0.001")], "1.00"))
    assert fault_code(e) == "Client.ValidationError" and "above what is left" in e.value.message
    assert rows(db) == before


def test_return_errors_are_precise_and_write_nothing(soap, card, db):
    op = sale(card, [line(1, "100.00", qty="2"), line(2, "40.00")])
    soap.service.RegisterOperation(Operation=op)
    before = rows(db)
    cases = [
        (ret(card, op["OperationId"], [line(3, "10.00")], "10.00"), "has no line 3"),
        (ret(card, op["OperationId"], [line(1, "10.00", qty="2.5")], "10.00"), "above what is left"),
        (ret(card, op["OperationId"], [line(1, "10.00", article="OTHER")], "10.00"), "Article"),
        (ret(card, op["OperationId"], [line(1, "50.00")], "50.00", BonusAccrued=D("1.00")), "disagrees"),
        (ret(card, op["OperationId"], [line(1, "50.00"), line(1, "50.00")], "50.00"), "appears twice"),
    ]
    for r, text in cases:
        with pytest.raises(Fault) as e:
            soap.service.RegisterOperation(Operation=r)
        assert fault_code(e) == "Client.ValidationError" and text in e.value.message, e.value.message
    assert rows(db) == before
    # given and agreeing is fine: line 1 half returned -> 2.50 of its 5.00
    r = soap.service.RegisterOperation(Operation=ret(card, op["OperationId"], [line(1, "50.00")], "50.00",
                                                     BonusAccrued=D("2.50"), BonusSpent=D("0.00")))
    assert (r.Status, r.BonusAccrued) == ("Applied", D("2.50"))


def test_a_late_receipt_earns_by_the_rules_of_its_day(soap, card, db, clock):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    clock.set(now)
    ProgramService(db).set(accrual_percent="20", valid_from=now + timedelta(hours=1))
    clock.set(now + timedelta(days=7))  # the receipt of a week ago arrives
    old = soap.service.RegisterOperation(Operation=sale(card, [line(1, "100.00")], when=now + timedelta(minutes=30)))
    new = soap.service.RegisterOperation(Operation=sale(card, [line(1, "100.00")], when=now + timedelta(days=7)))
    assert (old.BonusAccrued, new.BonusAccrued) == (D("5.00"), D("20.00"))


def test_calculate_reserve_confirm_less_with_lines(soap, card, db):
    soap.service.RegisterOperation(Operation=sale(card, [line(1, "2000.00")]))  # 100.00 accrued
    lines = [line(1, "120.00", qty="2"), line(2, "80.00"), line(3, "60.00", group="TOBACCO")]
    op_id = new_id()
    calc = soap.service.CalculateReceipt(Receipt=dict(
        OperationId=op_id, CardNumber=card, KKM="KKM-1", OperationTime=datetime.now(timezone.utc),
        Lines=dict(ReceiptLine=lines), BonusToSpend=D("150.00")))
    # maxima 60 + 40 + 0 = 100 (< 150 asked, = the balance): all of it
    assert (calc.MaxBonusPayment, calc.BonusSpent) == (D("100.00"), D("100.00"))
    preview = soap.service.CalculateReceipt(Receipt=dict(
        OperationId=op_id, CardNumber=card, KKM="KKM-1", OperationTime=datetime.now(timezone.utc),
        Lines=dict(ReceiptLine=lines), BonusToSpend=D("70.00")))
    held = soap.service.ReserveBonus(OperationId=op_id, CardNumber=card, KKM="KKM-1", Amount=calc.BonusSpent)
    assert held.Card.BonusBalance == D("0.00")
    # the customer pays part by card after all: 70.00 by bonus
    r = soap.service.RegisterOperation(Operation=sale(card, lines, op_id=op_id, BonusSpent=D("70.00")))
    # 70 over maxima 60:40 -> 42 / 28; accrual 5 % of (120-42) + (80-28) = 130 -> 6.50
    assert (r.Status, r.BonusSpent, r.BonusAccrued) == ("Applied", D("70.00"), D("6.50"))
    assert r.Card.BonusBalance == D("100.00") - D("70.00") + D("6.50")
    assert preview.BonusAccrued == r.BonusAccrued  # the register's preview and the applied sale agree
    assert [x.BonusSpent for x in preview.Lines.LineCalculation] == [D("42.00"), D("28.00"), D("0.00")]
