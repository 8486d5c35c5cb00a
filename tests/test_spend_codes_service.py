"""Spend codes in the service layer: the policy, the sources that never need a code, the stored form."""
from __future__ import annotations

import re
from dataclasses import replace
from decimal import Decimal as D

import pytest
from sqlalchemy import select

from kkmtransfer.adapters.db import server_secret, spend_codes
from kkmtransfer.domain import errors
from kkmtransfer.domain.model import Source
from kkmtransfer.domain.spend_codes import SpendCodeInvalid, SpendCodeRequired
from kkmtransfer.service_layer.services import BillingService

from .helpers import request


class Outbox:
    """An SMS provider that keeps what it was asked to send."""

    name = "outbox"

    def __init__(self):
        self.sent: list[tuple[str, str]] = []

    def send(self, phone, text):
        self.sent.append((phone, text))
        return str(len(self.sent))

    def last_code(self) -> str:
        return re.search(r"\d{4,6}", self.sent[-1][1]).group()


def billing(db, **settings) -> tuple[BillingService, Outbox]:
    svc = BillingService(db.engine, replace(db.settings, **settings), db.clock)
    outbox = Outbox()
    svc.spend_codes._provider = outbox
    return svc, outbox


@pytest.fixture
def card(db):
    db.add_card_range(1, 2, "P", 0)
    db.set_card_phone("P1", "89161234567")
    db.register_operation(request("P1", receipt_sum="100.00", accrued="50.00"))
    db.register_operation(request("P2", receipt_sum="100.00", accrued="50.00"))
    return "P1"


def test_policy_all_asks_every_card_off_asks_none(db, card):
    every, _ = billing(db, spend_code="all")
    with pytest.raises(SpendCodeRequired):
        every.register_operation(request("P2", spent="1.00"))
    off, _ = billing(db, spend_code="off")
    db.spend_codes.set_required("P1", "P2", True)
    assert off.register_operation(request("P2", spent="1.00")).status == "Applied"


def test_a_code_given_is_checked_even_when_not_required(db, card):
    off, outbox = billing(db, spend_code="off")
    with pytest.raises(SpendCodeInvalid):
        off.register_operation(request(card, spent="1.00"), spend_code="123456")
    off.spend_codes.request_code(card, "KKM-1", who="u")
    code = outbox.last_code()
    assert off.register_operation(request(card, spent="1.00"), spend_code=code).status == "Applied"
    with pytest.raises(SpendCodeInvalid):
        off.register_operation(request(card, spent="1.00"), spend_code=code)


def test_offline_journal_rows_and_returns_never_need_a_code(db, card):
    every, _ = billing(db, spend_code="all")
    sale = request(card, spent="10.00")
    assert every.register_operation(sale, Source.OFFLINE).status == "Applied"
    ret = request(card, kind="Return", receipt_sum="100.00", spent="10.00", original_operation_id=sale.operation_id)
    assert every.register_operation(ret).status == "Applied"
    assert every.card_info(card).balances.bonus == D("50.00")


def test_only_a_keyed_hash_is_stored(db, card):
    svc, outbox = billing(db, spend_code="all", spend_code_length=4)
    issued = svc.spend_codes.request_code(card, "KKM-1", who="u")
    code = outbox.last_code()
    assert len(code) == 4 and outbox.sent[-1][0] == "79161234567"
    assert issued.masked_phone == "+7 *** ***-45-67"
    with db.engine.connect() as conn:
        [row] = conn.execute(select(spend_codes)).mappings().all()
        key = conn.execute(select(server_secret.c.secret)).scalar_one()
    assert code not in str(dict(row)) and len(row["code_hash"]) == 64 and len(key) == 64
    # a configured secret replaces the stored key: the stored code no longer matches
    keyed, _ = billing(db, spend_code="all", spend_code_length=4, spend_code_secret="another key")
    with pytest.raises(SpendCodeInvalid):
        keyed.register_operation(request(card, spent="1.00"), spend_code=code)
    assert svc.register_operation(request(card, spent="1.00"), spend_code=code).status == "Applied"


def test_unknown_and_blocked_cards(db, card):
    svc, outbox = billing(db, spend_code="all")
    with pytest.raises(errors.CardNotFound):
        svc.spend_codes.request_code("NOPE", "KKM-1")
    from kkmtransfer.domain.model import CardStatus
    db.set_card_status(card, CardStatus.BLOCKED)
    with pytest.raises(errors.CardBlocked):
        svc.spend_codes.request_code(card, "KKM-1")
    assert outbox.sent == []
    outcomes = [e["outcome"] for e in svc.spend_codes.events(db.clock().replace(year=2000), db.clock().replace(
        year=2100))]
    assert outcomes == ["card_not_found", "card_blocked"]


def test_set_required_on_one_card_or_a_range(db, card):
    assert db.spend_codes.set_required("P1", "P2", True) == 2
    assert db.spend_codes.count_between("P1", "P2") == (2, 2)
    assert db.spend_codes.set_required("P2", None, False) == 1
    assert db.spend_codes.count_between("P1", "P9") == (2, 1)
    with pytest.raises(errors.CardNotFound):
        db.spend_codes.set_required("P9", None, True)
