"""Bonus life rules, deferred credit and expiry, by time travel (the server's clock is injectable)."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest

from kkmtransfer.config import Settings
from kkmtransfer.domain import errors
from kkmtransfer.service_layer.services import BillingService

from .helpers import ISSUED, request

MSK = ZoneInfo("Europe/Moscow")


def msk(y, m, d, hh=12, mm=0, ss=0) -> datetime:
    return datetime(y, m, d, hh, mm, ss, tzinfo=MSK)


@pytest.fixture
def card(db):
    db.add_card_range(1, 1, "L", 0, None, issued=ISSUED)
    return "L1"


def at(db, when: datetime):
    db.clock.set(when.astimezone(timezone.utc))
    return db.card_info("L1").balances


def test_deferral_starts_at_the_start_of_the_day_and_the_last_day_is_inclusive(db, card):
    db.add_promotion("P2", "two days late, ten days of life", delay_days=2, lifetime_days=10)
    db.clock.set(msk(2026, 11, 10, 23, 50))
    db.register_operation(request(card, accrued="10.00", time=msk(2026, 11, 10, 23, 45), promotion_code="P2"))

    b = at(db, msk(2026, 11, 11, 23, 59, 59))
    assert (b.bonus, b.bonus_pending) == (D("0.00"), D("10.00"))
    assert b.next_expiry_date == date(2026, 11, 22) and b.next_expiry_amount == D("10.00")
    b = at(db, msk(2026, 11, 12, 0, 0))          # the first day: spendable from midnight
    assert (b.bonus, b.bonus_pending) == (D("10.00"), D("0.00"))
    assert at(db, msk(2026, 11, 21, 23, 59, 59)).bonus == D("10.00")   # the 10th day, its last second
    b = at(db, msk(2026, 11, 22, 0, 0))          # burnt
    assert (b.bonus, b.next_expiry_date, b.next_expiry_amount) == (D("0.00"), None, D("0.00"))


def test_a_fixed_last_date_is_inclusive_in_the_business_zone(db, card):
    db.add_promotion("XMAS", "till new year", until=date(2026, 12, 31))
    db.clock.set(msk(2026, 12, 1))
    db.register_operation(request(card, accrued="7.00", time=msk(2026, 12, 1), promotion_code="XMAS"))
    assert at(db, msk(2026, 12, 31, 23, 59, 59)).bonus == D("7.00")
    assert at(db, msk(2027, 1, 1, 0, 0)).bonus == D("0.00")
    assert at(db, datetime(2026, 12, 31, 20, 59, 59, tzinfo=timezone.utc)).bonus == D("7.00")
    assert at(db, datetime(2026, 12, 31, 21, 0, 0, tzinfo=timezone.utc)).bonus == D("0.00")


def test_the_business_day_of_a_receipt_follows_the_configured_zone(db, engine, card, clock):
    """A receipt at 22:30 UTC is on the next day in Moscow and in Vladivostok: a one-day life ends
    at that zone's midnight, which is a different UTC instant for each zone."""
    receipt = datetime(2026, 11, 10, 22, 30, tzinfo=timezone.utc)
    for zone, burn_utc in (("Europe/Moscow", datetime(2026, 11, 11, 21, 0, tzinfo=timezone.utc)),
                           ("Asia/Vladivostok", datetime(2026, 11, 11, 14, 0, tzinfo=timezone.utc))):
        svc = BillingService(engine, Settings(database_url="-", timezone_name=zone, bonus_lifetime_days=1),
                             clock)
        number = f"TZ{len(zone)}"
        svc.add_card_range(1, 1, number, 0, None, issued=ISSUED)
        clock.set(receipt + timedelta(minutes=1))
        svc.register_operation(request(f"{number}1", accrued="5.00", time=receipt))
        clock.set(burn_utc - timedelta(seconds=1))
        assert svc.card_info(f"{number}1").balances.bonus == D("5.00"), zone
        clock.set(burn_utc)
        assert svc.card_info(f"{number}1").balances.bonus == D("0.00"), zone


def test_spending_takes_what_burns_first_and_never_pending_bonuses(db, card):
    db.add_promotion("SOON", "soon", lifetime_days=3)
    db.add_promotion("LATER", "later", lifetime_days=30)
    db.add_promotion("WAIT", "wait", delay_days=5)
    db.clock.set(msk(2026, 5, 1))
    for code, amount in (("LATER", "20.00"), (None, "30.00"), ("SOON", "10.00"), ("WAIT", "50.00")):
        db.register_operation(request(card, accrued=amount, time=msk(2026, 5, 1), promotion_code=code))
    b = db.card_info(card).balances
    assert (b.bonus, b.bonus_pending, b.next_expiry_date, b.next_expiry_amount) == (
        D("60.00"), D("50.00"), date(2026, 5, 4), D("10.00"))
    db.register_operation(request(card, spent="25.00", time=msk(2026, 5, 1)))
    b = db.card_info(card).balances   # SOON (10) gone, LATER 20 -> 5, non-expiring untouched
    assert (b.bonus, b.next_expiry_date, b.next_expiry_amount) == (D("35.00"), date(2026, 5, 31), D("5.00"))
    with pytest.raises(errors.InsufficientBonus):   # the 50 pending are not spendable
        db.register_operation(request(card, spent="35.01", time=msk(2026, 5, 1)))


def test_a_return_after_expiry_gives_back_burnt_bonuses_burnt(db, card):
    db.add_promotion("SHORT", "short", lifetime_days=2)
    db.clock.set(msk(2026, 3, 1))
    db.register_operation(request(card, accrued="10.00", time=msk(2026, 3, 1), promotion_code="SHORT"))
    db.register_operation(request(card, accrued="10.00", time=msk(2026, 3, 1)))
    sale = request(card, receipt_sum="100.00", spent="15.00", time=msk(2026, 3, 1))  # 10 SHORT + 5 forever
    db.register_operation(sale)
    assert db.card_info(card).balances.bonus == D("5.00")
    db.clock.set(msk(2026, 3, 5))  # SHORT burnt on Mar 3
    ret = request(card, kind="Return", receipt_sum="100.00", spent="15.00", time=msk(2026, 3, 5),
                  original_operation_id=sale.operation_id)
    result = db.register_operation(ret)
    # the 5 from the non-expiring lot come back usable; the 10 from SHORT come back burnt
    assert result.card.balances.bonus == D("10.00")


def test_unknown_closed_and_out_of_period_promotions(db, card):
    db.clock.set(msk(2026, 6, 10))
    with pytest.raises(errors.ValidationError, match="unknown PromotionCode"):
        db.register_operation(request(card, accrued="1.00", time=msk(2026, 6, 10), promotion_code="NOPE"))
    db.add_promotion("JUNE", "june", lifetime_days=5, valid_from=date(2026, 6, 1), valid_to=date(2026, 6, 30))
    with pytest.raises(errors.ValidationError, match="not valid"):
        db.register_operation(request(card, accrued="1.00", time=msk(2026, 5, 31), promotion_code="JUNE"))
    sale = request(card, accrued="3.00", time=msk(2026, 6, 10), promotion_code="JUNE")
    db.register_operation(sale)
    assert db.close_promotion("JUNE") == date(2026, 6, 10)
    db.clock.set(msk(2026, 6, 11))
    with pytest.raises(errors.ValidationError, match="not valid"):
        db.register_operation(request(card, accrued="1.00", time=msk(2026, 6, 11), promotion_code="JUNE"))
    # a return of a sale under a closed promotion is still taken
    db.register_operation(request(card, kind="Return", accrued="3.00", time=msk(2026, 6, 11),
                                  promotion_code="JUNE", original_operation_id=sale.operation_id))
    assert db.card_info(card).balances.bonus == D("0.00")
    [row] = [p for p in db.list_promotions() if p["code"] == "JUNE"]
    assert row["valid_to"] == date(2026, 6, 10) and row["closed_at"] is not None


def test_card_rules_defer_and_age_accumulation_and_receipt_count(db, card):
    db.add_card_range(2, 3, "L", 0, None, issued=ISSUED)
    assert db.set_card_rules("L1", "L3", accumulation_delay_days=1, accumulation_lifetime_days=30,
                             count_delay_days=0, count_lifetime_days=2) == 3
    db.clock.set(msk(2026, 4, 10))
    db.register_operation(request(card, receipt_sum="500.00", time=msk(2026, 4, 10)))
    b = db.card_info(card).balances
    assert (b.accumulation, b.accumulation_pending, b.receipt_count, b.receipt_count_pending) == (
        D("0.00"), D("500.00"), 1, 0)
    b = at(db, msk(2026, 4, 11, 0, 0))
    assert (b.accumulation, b.accumulation_pending, b.receipt_count) == (D("500.00"), D("0.00"), 1)
    b = at(db, msk(2026, 4, 12, 0, 0))           # count lived Apr 10 and 11
    assert (b.accumulation, b.receipt_count) == (D("500.00"), 0)
    assert at(db, msk(2026, 5, 10, 23, 59)).accumulation == D("500.00")  # 30 days from Apr 11
    assert at(db, msk(2026, 5, 11, 0, 0)).accumulation == D("0.00")
    # 0 lifetime means "never" again; one card only
    db.set_card_rules("L1", count_lifetime_days=0)
    db.register_operation(request(card, receipt_sum="1.00", time=msk(2026, 5, 11)))
    assert at(db, msk(2027, 5, 11)).receipt_count == 1


def test_a_return_before_the_deferred_credit_starts_takes_it_from_the_pending_lot(db, card):
    db.add_promotion("LATE", "late", delay_days=3)
    db.clock.set(msk(2026, 7, 1))
    db.register_operation(request(card, accrued="5.00", time=msk(2026, 7, 1)))
    sale = request(card, receipt_sum="100.00", accrued="20.00", time=msk(2026, 7, 1), promotion_code="LATE")
    db.register_operation(sale)
    db.register_operation(request(card, kind="Return", receipt_sum="50.00", accrued="8.00",
                                  time=msk(2026, 7, 2), original_operation_id=sale.operation_id))
    b = db.card_info(card).balances
    assert (b.bonus, b.bonus_pending) == (D("5.00"), D("12.00"))
    assert at(db, msk(2026, 7, 4)).bonus == D("17.00")


def test_a_late_receipt_whose_bonuses_already_burnt_changes_no_balance(db, card):
    """An offline receipt reaches the server after its promotion's bonuses would have burnt."""
    db.add_promotion("OLD", "old", lifetime_days=1)
    db.clock.set(msk(2026, 9, 10))
    result = db.register_operation(request(card, receipt_sum="10.00", accrued="4.00", time=msk(2026, 9, 1),
                                           promotion_code="OLD"))
    assert result.card.balances.bonus == D("0.00") and result.card.balances.accumulation == D("10.00")
