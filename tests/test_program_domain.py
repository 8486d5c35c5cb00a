"""The bonus program's calculation: hand-worked receipts and properties that hold for any receipt."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest
from hypothesis import given, settings, strategies as st

from kkmtransfer.domain.errors import ValidationError
from kkmtransfer.domain.program import (
    GroupRule,
    Program,
    ProgramVersion,
    ReceiptLine,
    allocate,
    calculate,
    share_of,
    version_at,
)

PROGRAM = Program(accrual_percent=D(5), max_payment_percent=D(50), tiers=((D(10000), D(7)), (D(50000), D(10))),
                  groups={"TOBACCO": GroupRule(excluded=True), "ALCO": GroupRule(D(1), D(20))})


def line(n, s, group=None, qty="1"):
    return ReceiptLine.build(line_number=n, article=f"A{n}", group=group, quantity=D(qty), price=D(s), sum=D(s))


LINES = [line(1, "1000.00", qty="2"), line(2, "333.33", "ALCO"), line(3, "500.00", "TOBACCO")]


def test_hand_worked_receipt_tier_group_excluded_and_spread():
    # accumulation 12,000 reaches the 10,000 tier: 7 %
    c = calculate(PROGRAM, LINES, accumulation=D(12000), to_spend=D(300), balance=D(1000))
    # maxima: 50 % of 1000.00; 20 % of 333.33 = 66.666 -> 66.66; excluded 0
    assert [x.max_payment for x in c.lines] == [D("500.00"), D("66.66"), D("0.00")]
    assert c.max_payment == D("566.66")
    # 300 pro rata 500 : 66.66 -> 264.709.. and 35.290.. -> 264.70 + 35.29 = 299.99; the kopeck to the largest
    assert [x.spent for x in c.lines] == [D("264.71"), D("35.29"), D("0.00")]
    assert c.spent == D("300.00")
    # accrual on what was not paid by bonus: (1000 - 264.71) * 7 % = 51.4703; (333.33 - 35.29) * 1 % = 2.9804
    # total 54.4507 -> 54.45; shares 51.47 + 2.98
    assert [x.percent for x in c.lines] == [D("7.00"), D("1.00"), D("0.00")]
    assert [x.accrued for x in c.lines] == [D("51.47"), D("2.98"), D("0.00")]
    assert c.accrued == D("54.45")


def test_whole_rounding_rounds_the_receipt_down_to_whole_bonuses():
    c = calculate(PROGRAM.changed(rounding="whole"), LINES, accumulation=D(12000), to_spend=D(300), balance=D(1000))
    assert c.accrued == D("54.00")
    assert sum(x.accrued for x in c.lines) == D("54.00")
    assert [x.accrued for x in c.lines] == [D("51.05"), D("2.95"), D("0.00")]


def test_tiers_base_and_promotion_and_accrue_on_bonus_paid():
    lines = [line(1, "100.00")]
    assert calculate(PROGRAM, lines, accumulation=D("9999.99")).accrued == D("5.00")
    assert calculate(PROGRAM, lines, accumulation=D("50000.00")).accrued == D("10.00")
    assert calculate(PROGRAM, lines, promotion_percent=D(15)).accrued == D("15.00")
    # paid 50.00 by bonus: 5 % of the other 50.00; with accrue-on-bonus-paid of the whole 100.00
    assert calculate(PROGRAM, lines, to_spend=D(50)).accrued == D("2.50")
    assert calculate(PROGRAM.changed(accrue_on_bonus_paid=True), lines, to_spend=D(50)).accrued == D("5.00")


def test_spend_is_capped_by_balance_and_maxima_and_strict_refuses_above_maxima():
    lines = [line(1, "100.00"), line(2, "10.00", "TOBACCO")]
    assert calculate(PROGRAM, lines, to_spend=D(80), balance=D(30)).spent == D("30.00")
    assert calculate(PROGRAM, lines, to_spend=D(80), balance=D(300)).spent == D("50.00")
    assert calculate(PROGRAM, lines, to_spend=D(80), balance=D(-5)).spent == D("0.00")
    with pytest.raises(ValidationError, match="above what the lines may be paid"):
        calculate(PROGRAM, lines, to_spend=D("50.01"), strict=True)


def test_the_default_program_accrues_nothing_and_lets_everything_be_paid():
    c = calculate(Program(), [line(1, "100.00"), line(2, "0.00")], to_spend=D("100.00"))
    assert (c.accrued, c.max_payment, c.spent) == (D("0.00"), D("100.00"), D("100.00"))


def test_bad_lines_are_refused():
    with pytest.raises(ValidationError, match="appears twice"):
        calculate(PROGRAM, [line(1, "1.00"), line(1, "2.00")])
    with pytest.raises(ValidationError, match="at least one line"):
        calculate(PROGRAM, [])
    with pytest.raises(ValidationError, match="Quantity"):
        ReceiptLine.build(line_number=1, article="x", quantity=D("0"), price=D(1), sum=D(1))
    with pytest.raises(ValidationError, match="3 fraction digits"):
        ReceiptLine.build(line_number=1, article="x", quantity=D("0.0001"), price=D(1), sum=D(1))
    with pytest.raises(ValidationError, match="LineNumber"):
        ReceiptLine.build(line_number=0, article="x", quantity=D("1"), price=D(1), sum=D(1))
    with pytest.raises(ValidationError, match="from 0 to 100"):
        Program(accrual_percent=D(101))


def test_versions_a_receipt_is_calculated_by_the_version_in_force_at_its_time():
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    v1 = ProgramVersion(t0, Program(accrual_percent=D(3)), t0)
    v2 = ProgramVersion(t0 + timedelta(days=7), Program(accrual_percent=D(8)), t0 + timedelta(days=1))
    assert version_at([v1, v2], t0 - timedelta(seconds=1)) == Program()
    assert version_at([v1, v2], t0).accrual_percent == D(3)
    assert version_at([v2, v1], t0 + timedelta(days=6, hours=23)).accrual_percent == D(3)
    assert version_at([v1, v2], t0 + timedelta(days=7)).accrual_percent == D(8)


def test_program_survives_its_storage_form():
    assert Program.from_json(PROGRAM.to_json()) == PROGRAM
    assert Program.from_json(Program().to_json()) == Program()


def test_partial_returns_of_a_line_add_up_to_its_total():
    total, qty = D("10.00"), D(3)
    first = share_of(total, D(0), D(0), D(1), qty)
    second = share_of(total, first, D(1), D(1), qty)
    third = share_of(total, first + second, D(2), D(1), qty)
    assert (first, second, third) == (D("3.33"), D("3.33"), D("3.34"))
    with pytest.raises(ValidationError, match="above what is left"):
        share_of(total, first, D(1), D("2.001"), qty)


# -- properties ---------------------------------------------------------------------------------
money_st = st.decimals(min_value=0, max_value=100000, places=2, allow_nan=False, allow_infinity=False)
pct_st = st.decimals(min_value=0, max_value=100, places=2, allow_nan=False, allow_infinity=False)
group_st = st.sampled_from([None, "A", "B", "X"])


@st.composite
def programs(draw):
    groups = {}
    for name in ("A", "B", "X"):
        kind = draw(st.sampled_from(["none", "own", "excluded"]))
        if kind == "own":
            groups[name] = GroupRule(draw(st.none() | pct_st), draw(st.none() | pct_st))
        elif kind == "excluded":
            groups[name] = GroupRule(excluded=True)
    tiers = draw(st.dictionaries(money_st, pct_st, max_size=3))
    return Program(accrual_percent=draw(pct_st), max_payment_percent=draw(pct_st), tiers=tuple(tiers.items()),
                   accrue_on_bonus_paid=draw(st.booleans()), rounding=draw(st.sampled_from(["kopeck", "whole"])),
                   groups=groups)


@st.composite
def receipts(draw):
    n = draw(st.integers(1, 25))
    return [ReceiptLine.build(line_number=i + 1, article=f"A{i}", group=draw(group_st),
                              quantity=D(draw(st.integers(1, 5000))) / 1000, price=D(0), sum=draw(money_st))
            for i in range(n)]


@settings(max_examples=300, deadline=None)
@given(programs(), receipts(), money_st, st.none() | money_st, money_st, st.none() | pct_st)
def test_calculation_properties(program, lines, to_spend, balance, accumulation, promo):
    c = calculate(program, lines, accumulation=accumulation, to_spend=to_spend, balance=balance,
                  promotion_percent=promo)
    assert sum(x.max_payment for x in c.lines) == c.max_payment
    assert sum(x.spent for x in c.lines) == c.spent
    assert sum(x.accrued for x in c.lines) == c.accrued
    for x, ln in zip(c.lines, lines):
        assert D(0) <= x.spent <= x.max_payment <= ln.sum
        assert x.accrued >= 0
        assert x.spent == x.spent.quantize(D("0.01")) and x.accrued == x.accrued.quantize(D("0.01"))
    assert c.spent == min(to_spend, c.max_payment, to_spend if balance is None else max(balance, D(0)))
    if program.rounding == "whole":
        assert c.accrued == c.accrued.to_integral_value()
    # never more accrual than the highest percent in play of the whole receipt
    top = max([program.accrual_percent, *(p for _, p in program.tiers), promo or D(0),
               *(g.accrual_percent or D(0) for g in program.groups.values())])
    assert c.accrued <= sum(ln.sum for ln in lines) * top / 100


@settings(max_examples=300, deadline=None)
@given(st.lists(money_st, min_size=1, max_size=30), st.data())
def test_allocate_properties(caps, data):
    total = data.draw(st.decimals(min_value=0, max_value=sum(caps), places=2))
    shares = allocate(total, caps, caps)
    assert sum(shares) == total
    assert all(D(0) <= s <= c for s, c in zip(shares, caps))


@settings(max_examples=200, deadline=None)
@given(money_st, st.integers(1, 50), st.data())
def test_partial_returns_never_exceed_and_add_up(total, qty_units, data):
    qty = D(qty_units)
    done, returned = D(0), D(0)
    while returned < qty:
        q = D(data.draw(st.integers(1, int(qty - returned))))
        take = share_of(total, done, returned, q, qty)
        assert take >= 0
        done += take
        returned += q
        assert done <= total
    assert done == total


def test_a_change_made_now_holds_in_a_change_planned_for_later_unless_it_sets_the_same():
    from kkmtransfer.domain.program import fold

    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    later, now = t0 + timedelta(days=30), t0 + timedelta(days=1)
    # made first: from `later` on, 9 %; made second: from `now` on, max payment 40 % and 6 %
    versions = fold([(later, {"accrual_percent": D(9)}),
                     (now, {"max_payment_percent": D(40), "accrual_percent": D(6)}),
                     (now + timedelta(hours=1), {"groups": {"T": GroupRule(excluded=True)}})])
    assert version_at(versions, now).accrual_percent == D(6)
    at_later = version_at(versions, later)
    assert (at_later.accrual_percent, at_later.max_payment_percent) == (D(9), D(40))
    assert at_later.groups["T"].excluded
    assert "T" not in version_at(fold([(t0, {"groups": {"T": GroupRule(excluded=True)}}),
                                       (now, {"groups": {"T": None}})]), now).groups
