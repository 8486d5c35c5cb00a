"""The ledger's rules on their own (no database, no SOAP)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest

from kkmtransfer.domain import errors
from kkmtransfer.domain.ledger import CardLedger, day_bounds
from kkmtransfer.domain.model import Lot, Measure, OperationRequest, Role, money, normalise_phone

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)
MSK = ZoneInfo("Europe/Moscow")


def lot(i, amount, expires_days=None, available_in_days=None, measure=Measure.BONUS):
    return Lot(id=i, measure=measure, remaining=D(amount),
               available_from=None if available_in_days is None else NOW + timedelta(days=available_in_days),
               expires_at=None if expires_days is None else NOW + timedelta(days=expires_days))


def test_spend_takes_earliest_expiry_first_and_non_expiring_last():
    lots = [lot(1, "10.00"), lot(2, "5.00", expires_days=30), lot(3, "5.00", expires_days=3)]
    ledger = CardLedger(lots, NOW)
    ledger.spend(D("12.00"))
    assert [(m.lot.id, m.amount) for m in ledger.moves] == [(3, D("-5.00")), (2, D("-5.00")), (1, D("-2.00"))]
    assert ledger.balance(Measure.BONUS) == D("8.00")


def test_spend_never_touches_pending_or_expired_lots():
    lots = [lot(1, "10.00", available_in_days=2), lot(2, "10.00", expires_days=-1), lot(3, "4.00")]
    ledger = CardLedger(lots, NOW)
    assert ledger.balance(Measure.BONUS) == D("4.00")
    assert ledger.pending(Measure.BONUS) == D("10.00")
    with pytest.raises(errors.InsufficientBonus):
        ledger.spend(D("4.01"))
    assert ledger.moves == [] and lots[2].remaining == D("4.00")


def test_takeback_uses_the_original_lot_then_others_then_leaves_a_debt():
    own = lot(1, "3.00")
    other = lot(2, "2.00", expires_days=10)
    ledger = CardLedger([own, other], NOW)
    ledger.take_back(Measure.BONUS, D("10.00"), preferred=[own])
    roles = [(m.lot.id, m.amount, m.role) for m in ledger.moves]
    assert roles[0] == (1, D("-3.00"), Role.TAKEBACK)
    assert roles[1] == (2, D("-2.00"), Role.TAKEBACK)
    # the rest is a debt in the never-ending bucket (the same lot 1 here: it is that bucket)
    assert roles[2][1:] == (D("-5.00"), Role.DEBT)
    assert ledger.balance(Measure.BONUS) == D("-5.00")


def test_a_credit_pays_the_debt_first():
    debt = lot(1, "-5.00")
    ledger = CardLedger([debt], NOW)
    ledger.credit(Measure.BONUS, D("8.00"), expires_at=NOW + timedelta(days=5))
    assert debt.remaining == D("0.00")
    assert ledger.balance(Measure.BONUS) == D("3.00")
    new = [x for x in ledger.lots if x.id is None]
    assert len(new) == 1 and new[0].remaining == D("3.00") and new[0].expires_at is not None


def test_refund_goes_back_to_the_lots_it_came_from_last_drawn_first():
    a, b = lot(1, "0.00", expires_days=1), lot(2, "0.00")
    ledger = CardLedger([a, b], NOW)
    ledger.refund([(a, D("5.00")), (b, D("2.00"))], D("4.00"))
    assert (a.remaining, b.remaining) == (D("2.00"), D("2.00"))
    with pytest.raises(AssertionError):
        CardLedger([a], NOW).refund([(a, D("1.00"))], D("1.01"))


def test_a_refund_to_an_expired_lot_comes_back_expired():
    expired, live = lot(1, "0.00", expires_days=-1), lot(2, "0.00")
    ledger = CardLedger([expired, live], NOW)
    ledger.refund([(live, D("1.00")), (expired, D("5.00"))], D("6.00"))
    # the expired lot gets its 5.00 back and burns them in the same operation
    assert [(m.lot.id, m.amount, m.role) for m in ledger.moves] == [
        (1, D("5.00"), Role.REFUND), (1, D("-5.00"), Role.EXPIRY), (2, D("1.00"), Role.REFUND)]
    assert ledger.balance(Measure.BONUS) == D("1.00") and expired.remaining == D("0.00")


def test_balances_report_next_expiry_as_the_day_the_bonus_is_gone():
    lots = [lot(1, "7.00", expires_days=2), lot(2, "3.00", expires_days=2), lot(3, "1.00", expires_days=9)]
    b = CardLedger(lots, NOW).balances(MSK)
    assert b.next_expiry_date == (NOW + timedelta(days=2)).astimezone(MSK).date()
    assert b.next_expiry_amount == D("10.00") and b.bonus == D("11.00")


@pytest.mark.parametrize("raw", ["+7 (916) 123-45-67", "8 916 123 45 67", "79161234567", "007 916 1234567",
                                 "9161234567", "+79161234567"])
def test_phone_normalisation(raw):
    assert normalise_phone(raw) == "9161234567"


@pytest.mark.parametrize("raw", ["12345", "+7 916 123 45 6a", "", "+1 916 123 45 67 8"])
def test_bad_phones_are_refused(raw):
    with pytest.raises(errors.ValidationError):
        normalise_phone(raw)


@pytest.mark.parametrize("value", ["1.001", "-1", "NaN", "abc", 1.5])
def test_money_refuses_what_is_not_money(value):
    with pytest.raises(errors.ValidationError):
        money(value, "X")


def _req(**kw):
    base = dict(operation_id="6f1c1c2e-6d0b-4a5e-9a57-0e0b5f7f1a11", card_number="1", kkm="K",
                operation_time=datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=timezone(timedelta(hours=3))),
                kind="Sale", receipt_sum=D("10.00"), bonus_accrued=D("1.00"), bonus_spent=D("0"))
    base.update(kw)
    return OperationRequest.build(**base)


def test_content_hash_sees_amounts_and_time_but_not_descriptive_fields():
    h = _req().content_hash()
    assert _req(store="S1", receipt_number="77").content_hash() == h
    assert _req(accumulation_delta=D("10.00"), receipt_count_delta=1).content_hash() == h  # the defaults
    assert _req(operation_time=datetime(2026, 1, 1, 9, 0, 0, tzinfo=timezone.utc)).content_hash() == h
    assert _req(bonus_accrued=D("1.01")).content_hash() != h
    assert _req(operation_time=datetime(2026, 1, 1, 9, 0, 1, tzinfo=timezone.utc)).content_hash() != h
    assert _req(operation_id="6F1C1C2E-6D0B-4A5E-9A57-0E0B5F7F1A11").operation_id == _req().operation_id


def _json_hash(r: OperationRequest) -> str:
    """content_hash as it was first written (json.dumps of the payload): stored hashes must stay valid."""
    import hashlib
    import json

    payload = {"card": r.card_number, "kkm": r.kkm, "kind": r.kind.value,
               "time": r.operation_time.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "sum": str(r.receipt_sum), "accrued": str(r.bonus_accrued), "spent": str(r.bonus_spent),
               "acc": str(r.accumulation_delta), "count": r.receipt_count_delta, "promo": r.promotion_code or "",
               "orig": r.original_operation_id or ""}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@pytest.mark.parametrize("kw", [
    {}, {"card_number": 'Карта "7"\\x', "kkm": "К\tA\u2028"}, {"promotion_code": "P\u00e9\U0001F600"},
    {"kind": "Return", "original_operation_id": "0f1c1c2e-6d0b-4a5e-9a57-0e0b5f7f1a11", "receipt_count_delta": -3,
     "accumulation_delta": D("-1.5")},
    {"receipt_sum": D("1000000"), "bonus_spent": "0.5", "accumulation_delta": D("-0.00")},
])
def test_content_hash_is_the_json_hash_it_always_was(kw):
    r = _req(**kw)
    assert r.content_hash() == _json_hash(r)


def test_money_from_text_is_the_same_when_seen_again():
    assert money("5.5", "X") == D("5.50") and str(money("5.5", "X")) == "5.50"
    assert str(money("-0.00", "X", allow_negative=True)) == "0.00"
    with pytest.raises(errors.ValidationError):
        money("-1.00", "X")  # seen with allow_negative=False: refused, whatever was seen before
    assert money("-1.00", "X", allow_negative=True) == D("-1.00")
    with pytest.raises(errors.ValidationError):
        money("-1.00", "X")


def test_requests_are_validated():
    with pytest.raises(errors.ValidationError, match="offset"):
        _req(operation_time=datetime(2026, 1, 1, 12, 0))
    with pytest.raises(errors.ValidationError, match="OriginalOperationId"):
        _req(kind="Return")
    with pytest.raises(errors.ValidationError):
        _req(operation_id="not-a-guid")
    with pytest.raises(errors.ValidationError):
        _req(receipt_sum=D("-1.00"))
    ret = _req(kind="Return", original_operation_id="0b7e0c53-2e3c-4f59-8d8f-1c1d7e3f9a00")
    assert ret.accumulation_delta == D("-10.00") and ret.receipt_count_delta == 0


def test_business_day_bounds_follow_the_time_zone():
    start, end = day_bounds(datetime(2026, 3, 1).date(), datetime(2026, 3, 1).date(), MSK)
    assert start == datetime(2026, 2, 28, 21, 0, tzinfo=timezone.utc)
    assert end - start == timedelta(days=1)
