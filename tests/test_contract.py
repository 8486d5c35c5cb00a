"""The SOAP contract over real HTTP with zeep, on SQLite and on PostgreSQL."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from zeep.exceptions import Fault

from kkmtransfer.adapters.db import operations
from kkmtransfer.domain.model import CardStatus

from .helpers import ISSUED, new_id, op_dict

CARD = "C100"
MSK = ZoneInfo("Europe/Moscow")


def fault_code(excinfo) -> str:
    return excinfo.value.code.split(":")[-1]


def count_operations(db) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(operations)).scalar_one()


@pytest.fixture
def card(db):
    db.add_card_range(100, 100, "C", 0, "Ivan Petrov", issued=ISSUED)
    return CARD


def register(soap, **kw):
    return soap.service.RegisterOperation(Operation=op_dict(**kw))


def test_a_new_card_reads_zero(soap, card):
    info = soap.service.GetCardInfo(card)
    assert info.CardNumber == card and info.Status == "Active" and info.Holder == "Ivan Petrov"
    assert (info.BonusBalance, info.BonusPending, info.Accumulation, info.ReceiptCount) == (D("0.00"), D("0.00"),
                                                                                           D("0.00"), 0)
    assert info.NextExpiryDate is None and info.NextExpiryAmount == D("0.00")


def test_a_sale_accrues_spends_accumulates_and_counts(soap, card):
    r1 = register(soap, card=card, receipt_sum="1000.00", accrued="50.00")
    assert r1.Status == "Applied"
    assert (r1.Card.BonusBalance, r1.Card.Accumulation, r1.Card.ReceiptCount) == (D("50.00"), D("1000.00"), 1)
    r2 = register(soap, card=card, receipt_sum="200.00", accrued="2.00", spent="30.00",
                  AccumulationDelta=D("150.00"), ReceiptCountDelta=2)
    assert (r2.Card.BonusBalance, r2.Card.Accumulation, r2.Card.ReceiptCount) == (D("22.00"), D("1150.00"), 3)
    info = soap.service.GetCardInfo(card)
    assert (info.BonusBalance, info.Accumulation, info.ReceiptCount) == (D("22.00"), D("1150.00"), 3)


def test_register_operation_tells_the_cashier_what_it_did_in_message(soap, card):
    """OperationResult.Message (optional in the contract): accrued, spent, the balance, in Russian, the way
    CalculateReceipt's message reads; a retry says it was not counted again; a Return says what it moved."""
    sale = op_dict(card, receipt_sum="1000.00", accrued="1250.50")
    first = soap.service.RegisterOperation(Operation=sale)
    assert first.Message == "Начислено бонусов: 1 250,50. Списано бонусов: 0,00. Баланс: 1 250,50."
    spend = register(soap, card=card, receipt_sum="300.00", accrued="3.00", spent="250.50")
    assert spend.Message == "Начислено бонусов: 3,00. Списано бонусов: 250,50. Баланс: 1 003,00."
    again = soap.service.RegisterOperation(Operation=sale)
    assert again.Status == "AlreadyApplied"
    assert again.Message == ("Чек уже был проведён, повторно не учтён. Начислено бонусов: 1 250,50. "
                             "Списано бонусов: 0,00. Баланс: 1 003,00.")
    ret = register(soap, card=card, kind="Return", receipt_sum="300.00", accrued="3.00", spent="250.50",
                   OriginalOperationId=spend.OperationId)
    assert ret.Message == "Возврат: снято бонусов 3,00, возвращено на карту 250,50. Баланс: 1 250,50."


def test_the_same_operation_twice_applies_once(soap, card, db):
    op = op_dict(card, receipt_sum="500.00", accrued="25.00", Store="S1", ReceiptNumber="0042")
    first = soap.service.RegisterOperation(Operation=op)
    again = soap.service.RegisterOperation(Operation=op)
    assert (first.Status, again.Status) == ("Applied", "AlreadyApplied")
    assert again.Card.BonusBalance == first.Card.BonusBalance == D("25.00")
    assert again.Card.ReceiptCount == 1
    # descriptive fields are not part of "the contents"; the id's letter case is not either
    same = dict(op, Store="S2", ReceiptNumber=None, OperationId=op["OperationId"].upper())
    assert soap.service.RegisterOperation(Operation=same).Status == "AlreadyApplied"
    assert count_operations(db) == 1


@pytest.mark.parametrize("change", [dict(BonusAccrued=D("26.00")), dict(ReceiptSum=D("501.00")),
                                    dict(Kind="Return"), dict(KKM="KKM-2"), dict(BonusSpent=D("1.00"))])
def test_the_same_id_with_other_contents_is_a_conflict(soap, card, db, change):
    op = op_dict(card, receipt_sum="500.00", accrued="25.00")
    soap.service.RegisterOperation(Operation=op)
    changed = dict(op, **change)
    if changed["Kind"] == "Return":
        changed["OriginalOperationId"] = new_id()
    with pytest.raises(Fault) as exc:
        soap.service.RegisterOperation(Operation=changed)
    assert fault_code(exc) == "Client.OperationConflict"
    assert soap.service.GetCardInfo(card).BonusBalance == D("25.00")
    assert count_operations(db) == 1


def test_the_same_id_on_another_card_is_a_conflict(soap, card, db):
    db.add_card_range(101, 101, "C", 0, None, issued=ISSUED)
    op = op_dict(card, accrued="5.00")
    soap.service.RegisterOperation(Operation=op)
    with pytest.raises(Fault) as exc:
        soap.service.RegisterOperation(Operation=dict(op, CardNumber="C101"))
    assert fault_code(exc) == "Client.OperationConflict"
    assert soap.service.GetCardInfo("C101").BonusBalance == D("0.00")


def test_spending_more_than_the_balance_is_refused_and_writes_nothing(soap, card, db):
    register(soap, card=card, accrued="40.00")
    with pytest.raises(Fault) as exc:
        register(soap, card=card, receipt_sum="300.00", accrued="5.00", spent="40.01")
    assert fault_code(exc) == "Client.InsufficientBonus"
    info = soap.service.GetCardInfo(card)
    assert (info.BonusBalance, info.Accumulation, info.ReceiptCount) == (D("40.00"), D("100.00"), 1)
    assert count_operations(db) == 1
    assert register(soap, card=card, spent="40.00").Card.BonusBalance == D("0.00")


def test_partial_and_full_returns_within_the_sale(soap, card):
    register(soap, card=card, receipt_sum="100.00", accrued="100.00")
    sale = op_dict(card, receipt_sum="1000.00", accrued="30.00", spent="60.00")
    after_sale = soap.service.RegisterOperation(Operation=sale).Card
    assert after_sale.BonusBalance == D("70.00") and after_sale.Accumulation == D("1100.00")

    part = op_dict(card, kind="Return", receipt_sum="400.00", accrued="10.00", spent="20.00",
                   OriginalOperationId=sale["OperationId"])
    r = soap.service.RegisterOperation(Operation=part).Card
    assert r.BonusBalance == D("80.00")           # +20 given back, -10 taken back
    assert r.Accumulation == D("700.00") and r.ReceiptCount == 2

    rest = op_dict(card, kind="Return", receipt_sum="600.00", accrued="20.00", spent="40.00",
                   OriginalOperationId=sale["OperationId"])
    r = soap.service.RegisterOperation(Operation=rest).Card
    assert r.BonusBalance == D("100.00") and r.Accumulation == D("100.00")

    one_more = op_dict(card, kind="Return", receipt_sum="0.00", spent="0.01",
                       OriginalOperationId=sale["OperationId"])
    with pytest.raises(Fault) as exc:
        soap.service.RegisterOperation(Operation=one_more)
    assert fault_code(exc) == "Client.ReturnExceedsSale"


@pytest.mark.parametrize("field,value", [("BonusSpent", "60.01"), ("BonusAccrued", "30.01"),
                                         ("ReceiptSum", "1000.01")])
def test_a_return_never_exceeds_its_sale(soap, card, db, field, value):
    register(soap, card=card, accrued="100.00")
    sale = op_dict(card, receipt_sum="1000.00", accrued="30.00", spent="60.00")
    soap.service.RegisterOperation(Operation=sale)
    ret = op_dict(card, kind="Return", receipt_sum="10.00", OriginalOperationId=sale["OperationId"])
    ret[field] = D(value)
    before = soap.service.GetCardInfo(card)
    with pytest.raises(Fault) as exc:
        soap.service.RegisterOperation(Operation=ret)
    assert fault_code(exc) == "Client.ReturnExceedsSale"
    assert soap.service.GetCardInfo(card) == before
    assert count_operations(db) == 2


def test_a_return_names_a_sale_of_the_same_card(soap, card, db):
    db.add_card_range(101, 101, "C", 0, None, issued=ISSUED)
    sale = op_dict(card, accrued="10.00")
    soap.service.RegisterOperation(Operation=sale)
    with pytest.raises(Fault) as exc:
        register(soap, card="C101", kind="Return", OriginalOperationId=sale["OperationId"])
    assert fault_code(exc) == "Client.ValidationError"
    ret = op_dict(card, kind="Return", receipt_sum="10.00", OriginalOperationId=sale["OperationId"])
    soap.service.RegisterOperation(Operation=ret)
    with pytest.raises(Fault) as exc:  # a return of a return
        register(soap, card=card, kind="Return", receipt_sum="1.00", OriginalOperationId=ret["OperationId"])
    assert fault_code(exc) == "Client.OriginalNotFound"


def test_taking_back_spent_accruals_leaves_a_debt_that_later_accruals_pay(soap, card):
    sale = op_dict(card, receipt_sum="500.00", accrued="50.00")
    soap.service.RegisterOperation(Operation=sale)
    register(soap, card=card, spent="45.00")
    ret = op_dict(card, kind="Return", receipt_sum="500.00", accrued="50.00",
                  OriginalOperationId=sale["OperationId"])
    r = soap.service.RegisterOperation(Operation=ret)  # never refused for the debt
    assert r.Card.BonusBalance == D("-45.00")
    with pytest.raises(Fault) as exc:
        register(soap, card=card, spent="0.01")
    assert fault_code(exc) == "Client.InsufficientBonus"
    assert register(soap, card=card, accrued="60.00").Card.BonusBalance == D("15.00")


def test_history_is_oldest_first_with_signed_moves_and_inclusive_dates(soap, card):
    day1 = datetime(2026, 11, 1, 20, 30, tzinfo=timezone.utc)  # 23:30 in Moscow, Nov 1
    day2 = datetime(2026, 11, 1, 21, 30, tzinfo=timezone.utc)  # 00:30 in Moscow, Nov 2
    s1 = op_dict(card, receipt_sum="100.00", accrued="10.00", time=day2, ReceiptNumber="2")
    s0 = op_dict(card, receipt_sum="50.00", accrued="5.00", time=day1, ReceiptNumber="1")
    soap.service.RegisterOperation(Operation=s1)
    soap.service.RegisterOperation(Operation=s0)
    ret = op_dict(card, kind="Return", receipt_sum="20.00", accrued="2.00", time=day2 + timedelta(hours=1),
                  OriginalOperationId=s1["OperationId"])
    soap.service.RegisterOperation(Operation=ret)

    history = soap.service.GetCardOperations(card, date(2026, 11, 1), date(2026, 11, 2))
    assert [h.OperationId for h in history] == [s0["OperationId"], s1["OperationId"], ret["OperationId"]]
    assert [(h.Kind, h.Source, h.Bonus, h.Accumulation, h.ReceiptCount) for h in history] == [
        ("Sale", "Online", D("5.00"), D("50.00"), 1),
        ("Sale", "Online", D("10.00"), D("100.00"), 1),
        ("Return", "Online", D("-2.00"), D("-20.00"), 0),
    ]
    assert history[0].Time == day1 and history[0].KKM == "KKM-1" and history[0].ReceiptNumber == "1"
    only_nov2 = soap.service.GetCardOperations(card, date(2026, 11, 2), date(2026, 11, 2))
    assert [h.OperationId for h in only_nov2] == [s1["OperationId"], ret["OperationId"]]
    # an empty history is an empty GetCardOperationsResult element, which zeep gives as None
    assert not soap.service.GetCardOperations(card, date(2026, 11, 3), date(2026, 11, 30))
    with pytest.raises(Fault) as exc:
        soap.service.GetCardOperations(card, date(2026, 11, 2), date(2026, 11, 1))
    assert fault_code(exc) == "Client.ValidationError"
    with pytest.raises(Fault) as exc:
        soap.service.GetCardOperations("NOPE", date(2026, 11, 1), date(2026, 11, 2))
    assert fault_code(exc) == "Client.CardNotFound"


def test_find_card_by_phone(soap, db, card):
    db.add_card_range(101, 103, "C", 0, None, issued=ISSUED)
    db.set_card_phone(card, "+7 (916) 111-22-33")
    found = soap.service.FindCardByPhone("8 916 111 22 33")
    assert found.CardNumber == card
    assert soap.service.FindCardByPhone("0079161112233").CardNumber == card

    db.set_card_phone("C101", "79162223344")
    db.set_card_phone("C102", "89162223344")
    with pytest.raises(Fault) as exc:
        soap.service.FindCardByPhone("9162223344")
    assert fault_code(exc) == "Client.AmbiguousPhone"
    db.set_card_status("C102", CardStatus.BLOCKED)  # the active one wins
    assert soap.service.FindCardByPhone("+79162223344").CardNumber == "C101"

    with pytest.raises(Fault) as exc:
        soap.service.FindCardByPhone("9990000000")
    assert fault_code(exc) == "Client.CardNotFound"
    with pytest.raises(Fault) as exc:
        soap.service.FindCardByPhone("12-34")
    assert fault_code(exc) == "Client.ValidationError"


def test_a_blocked_card_is_read_but_not_used(soap, db, card):
    register(soap, card=card, accrued="10.00")
    retry = op_dict(card, accrued="1.00")
    soap.service.RegisterOperation(Operation=retry)
    db.set_card_status(card, CardStatus.BLOCKED)
    info = soap.service.GetCardInfo(card)
    assert info.Status == "Blocked" and info.BonusBalance == D("11.00")
    with pytest.raises(Fault) as exc:
        register(soap, card=card, spent="1.00")
    assert fault_code(exc) == "Client.CardBlocked"
    # a retry of what was applied before the block still answers AlreadyApplied
    assert soap.service.RegisterOperation(Operation=retry).Status == "AlreadyApplied"


def test_times_are_answered_in_the_business_zone(soap, card):
    t = datetime(2026, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=5)))
    register(soap, card=card, time=t)
    [h] = soap.service.GetCardOperations(card, date(2026, 6, 1), date(2026, 6, 1))
    assert h.Time == t and h.Time.utcoffset() == MSK.utcoffset(datetime(2026, 6, 1))
