"""Holds over real HTTP with zeep, on SQLite and on PostgreSQL: ReserveBonus, confirmation by the
Sale with the hold's OperationId, CancelOperation, release of hung holds, late confirmation."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest
from sqlalchemy import func, select
from zeep.exceptions import Fault

from kkmtransfer.adapters.db import entries, holds, operations
from kkmtransfer.service_layer.holds import HoldService

from .helpers import new_id, op_dict

CARD = "H100"


def fault_code(excinfo) -> str:
    return excinfo.value.code.split(":")[-1]


def rows(db):
    with db.engine.connect() as conn:
        return tuple(conn.execute(select(func.count()).select_from(t)).scalar_one()
                     for t in (operations, entries, holds))


@pytest.fixture
def card(db, soap):
    db.add_card_range(100, 100, "H", 0, None)
    soap.service.RegisterOperation(Operation=op_dict(CARD, receipt_sum="1000.00", accrued="100.00"))
    return CARD


def reserve(soap, amount, op_id=None, card=CARD, kkm="KKM-1"):
    return soap.service.ReserveBonus(OperationId=op_id or new_id(), CardNumber=card, KKM=kkm, Amount=D(amount))


def test_reserve_then_confirm_less_releases_the_rest(soap, card, db):
    op_id = new_id()
    r = reserve(soap, "60.00", op_id)
    assert (r.Status, r.Amount, r.Card.BonusBalance) == ("Reserved", D("60.00"), D("40.00"))
    assert r.ExpiresAt > datetime.now(timezone.utc) + timedelta(seconds=890)
    assert soap.service.GetCardInfo(card).BonusBalance == D("40.00")
    # a retry of the reservation changes nothing
    again = reserve(soap, "60.00", op_id)
    assert (again.Status, again.Card.BonusBalance) == ("AlreadyReserved", D("40.00"))
    # a spend elsewhere cannot take the held bonuses
    with pytest.raises(Fault) as e:
        soap.service.RegisterOperation(Operation=op_dict(card, spent="40.01"))
    assert fault_code(e) == "Client.InsufficientBonus"
    # confirm with 45.00 spent of the 60.00 held: 15.00 come back
    sale = op_dict(card, receipt_sum="300.00", spent="45.00", op_id=op_id)
    res = soap.service.RegisterOperation(Operation=sale)
    assert (res.Status, res.Card.BonusBalance, res.BonusSpent) == ("Applied", D("55.00"), D("45.00"))
    again = soap.service.RegisterOperation(Operation=sale)
    assert (again.Status, again.BonusSpent) == ("AlreadyApplied", D("45.00"))
    with pytest.raises(Fault) as e:
        soap.service.CancelOperation(OperationId=op_id)
    assert fault_code(e) == "Client.HoldAlreadyConfirmed"
    with pytest.raises(Fault) as e:
        reserve(soap, "60.00", op_id)
    assert fault_code(e) == "Client.HoldAlreadyConfirmed"
    assert soap.service.GetCardInfo(card).BonusBalance == D("55.00")


def test_reserve_then_cancel_twice_is_harmless(soap, card):
    op_id = new_id()
    reserve(soap, "100.00", op_id)
    assert soap.service.GetCardInfo(card).BonusBalance == D("0.00")
    c = soap.service.CancelOperation(OperationId=op_id)
    assert (c.Status, c.Card.BonusBalance) == ("Cancelled", D("100.00"))
    c = soap.service.CancelOperation(OperationId=op_id)
    assert (c.Status, c.Card.BonusBalance) == ("AlreadyCancelled", D("100.00"))
    with pytest.raises(Fault) as e:
        soap.service.CancelOperation(OperationId=new_id())
    assert fault_code(e) == "Client.HoldNotFound"


def test_what_a_register_gets_wrong_writes_nothing(soap, card, db):
    op_id = new_id()
    reserve(soap, "50.00", op_id)
    before = rows(db)
    cases = [
        (lambda: soap.service.RegisterOperation(Operation=op_dict(card, spent="50.01", op_id=op_id)),
         "Client.ValidationError", "above the hold"),
        (lambda: reserve(soap, "100.01"), "Client.InsufficientBonus", ""),
        (lambda: reserve(soap, "0.00"), "Client.ValidationError", ""),
        (lambda: reserve(soap, "10.00", op_id), "Client.OperationConflict", ""),
        (lambda: reserve(soap, "10.00", card="NOPE"), "Client.CardNotFound", ""),
    ]
    for call, code, text in cases:
        with pytest.raises(Fault) as e:
            call()
        assert fault_code(e) == code, (code, e.value.message)
        assert text in e.value.message
    db.add_card_range(101, 101, "H", 0, None)
    with pytest.raises(Fault) as e:
        soap.service.RegisterOperation(Operation=op_dict("H101", op_id=op_id))
    assert fault_code(e) == "Client.ValidationError"
    assert rows(db) == before
    assert soap.service.GetCardInfo(card).BonusBalance == D("50.00")


def test_hung_hold_released_then_late_confirmation(soap, card, db, clock):
    now = datetime.now(timezone.utc)
    clock.set(now)
    late_ok, late_refused = new_id(), new_id()
    reserve(soap, "30.00", late_ok)
    reserve(soap, "70.00", late_refused)
    svc = HoldService(db)
    assert [h["id"] for h in svc.list(hung=True)] == []
    clock.set(now + timedelta(seconds=901))
    assert {h["id"] for h in svc.list(hung=True)} == {late_ok, late_refused}
    assert svc.release_hung() == 2
    assert svc.release_hung() == 0
    assert soap.service.GetCardInfo(card).BonusBalance == D("100.00")
    # meanwhile the holder spends 50 elsewhere: 50 left
    soap.service.RegisterOperation(Operation=op_dict(card, spent="50.00"))
    # the late confirmations: 30 fits, 70 does not
    r = soap.service.RegisterOperation(Operation=op_dict(card, spent="30.00", op_id=late_ok))
    assert (r.Status, r.Card.BonusBalance) == ("Applied", D("20.00"))
    with pytest.raises(Fault) as e:
        soap.service.RegisterOperation(Operation=op_dict(card, spent="70.00", op_id=late_refused))
    assert fault_code(e) == "Client.InsufficientBonus"
    c = soap.service.CancelOperation(OperationId=late_refused)
    assert c.Status == "AlreadyCancelled"


def test_release_by_hand(soap, card, db):
    op_id = new_id()
    reserve(soap, "25.00", op_id)
    svc = HoldService(db)
    assert [h["amount"] for h in svc.list()] == [D("25.00")]
    assert svc.release_by_hand(op_id).status == "Cancelled"
    assert svc.list() == []
    assert soap.service.GetCardInfo(card).BonusBalance == D("100.00")


def test_a_hold_confirmed_by_the_offline_journal_and_a_late_one_rejected(db, soap, card, tmp_path, clock):
    """The confirmation arrives as the Sale with the hold's OperationId in a journal: still reserved, it
    confirms; released and the balance no longer allows it, the row is a reject with that reason."""
    from kkmtransfer.service_layer.journal import JournalImport

    from .test_journal import journal, line

    now = datetime.now(timezone.utc).replace(microsecond=0)
    clock.set(now)
    confirmed, late = new_id(), new_id()
    reserve(soap, "30.00", confirmed)
    reserve(soap, "60.00", late)
    clock.set(now + timedelta(seconds=1000))
    # `confirmed` is hung but not released yet; `late` is released by the task
    HoldService(db).release_by_hand(late)
    soap.service.RegisterOperation(Operation=op_dict(card, spent="50.00"))  # 70 - 50 = 20 left
    path = journal(tmp_path, "hold.csv",
                   line(number="1", when=now, card=card, spent="25.00", total="250.00", op_id=confirmed),
                   line(number="2", when=now, card=card, spent="60.00", total="600.00", op_id=late))
    summary = JournalImport(db).import_file(path)
    assert (summary.applied, summary.rejected, summary.reasons) == (1, 1, {"Client.InsufficientBonus": 1})
    # 30 held, 25 spent: 5 back -> 20 + 5
    assert soap.service.GetCardInfo(card).BonusBalance == D("25.00")
    with pytest.raises(Fault) as e:
        soap.service.CancelOperation(OperationId=confirmed)
    assert fault_code(e) == "Client.HoldAlreadyConfirmed"


def test_billing_disable_removes_holds_and_receipt_lines_too(soap, card, db):
    from kkmtransfer.domain.program import ReceiptLine
    from kkmtransfer.service_layer.billing_admin import BillingAdmin

    from .helpers import request

    reserve(soap, "10.00")
    line = ReceiptLine.build(line_number=1, article="X", quantity=D(1), price=D("5.00"), sum=D("5.00"))
    db.register_operation(request(card, receipt_sum="5.00", accrued=None, lines=[line]))
    removed = BillingAdmin(db).disable()
    assert removed["holds"] == 1 and removed["receipt_lines"] == 1 and removed["operations"] == 3
    assert rows(db) == (0, 0, 0)
