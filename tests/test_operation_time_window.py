"""Issue 13 §3, the plausibility window of OperationTime: a receipt from before the card existed (more than
KKMTRANSFER_OPTIME_BEFORE_CARD_GRACE before its created_at) is Client.ValidationError online (zeep over HTTP)
and a reject in the offline journal; `cards add-range --issued` and the setting let late-loaded cards in."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest
from sqlalchemy import func, select
from zeep.exceptions import Fault

from kkmtransfer.adapters.db import cards, journal_rejects, operations
from kkmtransfer.domain import errors
from kkmtransfer.service_layer.journal import JournalImport
from kkmtransfer.service_layer.services import BillingService

from .helpers import new_id, op_dict, request
from .test_cli import cli
from .test_journal import journal, line

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


def count(db, table, *where) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def created_at(db, number):
    with db.engine.connect() as conn:
        return conn.execute(select(cards.c.created_at).where(cards.c.number == number)).scalar_one()


@pytest.fixture
def card(db):
    """W1 entered in the server at NOW; the server's clock a day later."""
    db.clock.set(NOW)
    db.add_card_range(1, 1, "W", 0, None)
    db.clock.set(NOW + timedelta(days=1))
    return "W1"


def test_a_receipt_from_before_the_card_existed_is_a_validation_fault(soap, db, card):
    old = op_dict(card, receipt_sum="100.00", accrued="5.00", time=NOW - timedelta(days=30, minutes=1))
    with pytest.raises(Fault) as exc:
        soap.service.RegisterOperation(Operation=old)
    assert exc.value.code.split(":")[-1] == "Client.ValidationError"
    assert exc.value.message.startswith("OperationTime:") and f"before card {card} existed" in exc.value.message
    assert "30 d earlier accepted" in exc.value.message and "check the register's clock" in exc.value.message
    assert count(db, operations) == 0 and db.card_info(card).balances.bonus == 0
    # a clock reset to 2000 likewise
    with pytest.raises(Fault) as exc:
        soap.service.RegisterOperation(Operation=op_dict(card, time=datetime(2000, 1, 1, tzinfo=timezone.utc)))
    assert exc.value.code.split(":")[-1] == "Client.ValidationError"
    # within the grace (the card handed out before it was loaded): applied
    ok = op_dict(card, receipt_sum="100.00", accrued="5.00", time=NOW - timedelta(days=29, hours=23))
    assert soap.service.RegisterOperation(Operation=ok).Status == "Applied"
    assert db.card_info(card).balances.bonus == D("5.00")


def test_calculate_receipt_keeps_the_same_window(soap, db, card):
    def calc(when):
        return soap.service.CalculateReceipt(Receipt=dict(
            OperationId=new_id(), CardNumber=card, KKM="KKM-1", OperationTime=when,
            Lines=dict(ReceiptLine=[dict(LineNumber=1, Article="A", Quantity=D("1"), Price=D("10.00"),
                                         Sum=D("10.00"))])))

    for when in (NOW - timedelta(days=31), NOW + timedelta(days=3)):  # before the card; too far ahead
        with pytest.raises(Fault) as exc:
            calc(when)
        assert exc.value.code.split(":")[-1] == "Client.ValidationError"
        assert exc.value.message.startswith("OperationTime:")
    assert calc(NOW).OperationId


def test_cards_entered_with_their_day_of_issue_take_receipts_from_then(soap, db):
    db.add_card_range(2, 3, "W", 0, None, issued=datetime(2026, 3, 1, tzinfo=timezone.utc))
    early = op_dict("W2", time=datetime(2026, 2, 10, tzinfo=timezone.utc))  # 19 days before the issue: grace
    assert soap.service.RegisterOperation(Operation=early).Status == "Applied"
    with pytest.raises(Fault):
        soap.service.RegisterOperation(Operation=op_dict("W3", time=datetime(2026, 1, 20, tzinfo=timezone.utc)))
    with pytest.raises(errors.ValidationError, match="in the future"):
        db.add_card_range(4, 4, "W", 0, None, issued=datetime.now(timezone.utc) + timedelta(hours=1))
    assert count(db, cards, cards.c.number == "W4") == 0


def test_the_grace_is_configurable_and_the_rule_can_be_turned_off(db, card):
    receipt = request(card, time=NOW - timedelta(days=40))
    with pytest.raises(errors.ValidationError, match="before card W1 existed"):
        db.register_operation(receipt)
    for grace in (timedelta(days=45), None):
        other = BillingService(db.engine, dataclasses.replace(db.settings, optime_before_card_grace=grace),
                               db.clock)
        assert other.register_operation(dataclasses.replace(receipt, operation_id=new_id())).status == "Applied"
    strict = BillingService(db.engine, dataclasses.replace(db.settings, optime_before_card_grace=timedelta(0)),
                            db.clock)
    with pytest.raises(errors.ValidationError, match=r"0 s earlier accepted"):
        strict.register_operation(request(card, time=NOW - timedelta(seconds=1)))
    assert strict.register_operation(request(card, time=NOW)).status == "Applied"


def test_a_retry_of_an_applied_receipt_is_answered_whatever_the_window(db, card):
    """The window is checked for new receipts only: an id applied before is AlreadyApplied, not a fault."""
    receipt = request(card, time=NOW - timedelta(days=20))
    assert db.register_operation(receipt).status == "Applied"
    narrow = BillingService(db.engine, dataclasses.replace(db.settings, optime_before_card_grace=timedelta(0)),
                            db.clock)
    assert narrow.register_operation(receipt).status == "AlreadyApplied"


def test_a_journal_row_from_before_the_card_existed_is_a_reject_and_the_rest_applied(db, card, tmp_path):
    path = journal(tmp_path, "old.csv",
                   line(number="1", card=card, when=NOW - timedelta(days=2), accrued="2.00"),
                   line(number="2", card=card, when=datetime(2001, 1, 1, tzinfo=timezone.utc), accrued="7.00"),
                   line(number="3", card=card, when=NOW, accrued="3.00"))
    summary = JournalImport(db).import_file(path)
    assert (summary.applied, summary.rejected) == (2, 1)
    with db.engine.connect() as conn:
        reject = conn.execute(select(journal_rejects)).mappings().one()
    assert reject["line_no"] == 3 and reject["fault_code"] == "Client.ValidationError"
    assert f"before card {card} existed" in reject["reason"]
    assert db.card_info(card).balances.bonus == D("5.00")
    # the operator turns the rule off for a migration: the retry applies it
    off = BillingService(db.engine, dataclasses.replace(db.settings, optime_before_card_grace=None), db.clock)
    assert JournalImport(off).retry().applied == 1
    assert db.card_info(card).balances.bonus == D("12.00")


def test_cards_add_range_issued_on_the_command_line(db, database_url):
    out = cli(database_url, "cards", "add-range", "--from", "7", "--to", "8", "--prefix", "W", "--issued",
              "2026-06-01")
    assert "2 cards created" in out.stdout
    # midnight of that day in the business time zone (Europe/Moscow, +03:00)
    assert created_at(db, "W7") == datetime(2026, 5, 31, 21, 0, tzinfo=timezone.utc)
    assert db.register_operation(request("W8", time=datetime(2026, 5, 10, tzinfo=timezone.utc))).status == "Applied"
    future = (datetime.now(timezone.utc) + timedelta(days=3)).strftime("%Y-%m-%d")
    bad = cli(database_url, "cards", "add-range", "--from", "9", "--to", "9", "--prefix", "W", "--issued", future,
              check=False)
    assert bad.returncode == 1 and "in the future" in bad.stderr and "Traceback" not in bad.stderr
