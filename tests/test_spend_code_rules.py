"""The pure rules of SMS spend codes: generation, keyed hash, verdicts, rationing."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from kkmtransfer.domain import spend_codes as sc
from kkmtransfer.domain.errors import ValidationError

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=timezone.utc)
KEY = b"k" * 32
RULES = sc.CodeRules()


@pytest.mark.parametrize("length", [4, 5, 6])
def test_codes_have_the_configured_digits_and_are_spread(length):
    codes = [sc.generate_code(length) for _ in range(3000)]
    assert all(len(c) == length and c.isdigit() for c in codes)
    first = Counter(c[0] for c in codes)
    assert set(first) == set("0123456789")  # leading zeros kept, every digit shows up
    assert len(set(codes)) > 2000


@pytest.mark.parametrize("length", [3, 7])
def test_lengths_outside_4_to_6_are_refused(length):
    with pytest.raises(ValueError):
        sc.generate_code(length)
    with pytest.raises(ValueError):
        sc.CodeRules(length=length)


def test_the_hash_is_keyed_and_bound_to_the_card():
    h = sc.code_hash(KEY, "777", "123456")
    assert "123456" not in h and len(h) == 64
    assert sc.code_matches(KEY, "777", "123456", h)
    assert not sc.code_matches(KEY, "778", "123456", h)
    assert not sc.code_matches(b"other", "777", "123456", h)
    assert not sc.code_matches(KEY, "777", "123457", h)


def test_entered_code_normalised():
    assert sc.normalise_entered(" 12 34-56 ", 6) == "123456"
    for bad in (None, "", "12345", "1234567", "12345a", "１２３４５６"):
        with pytest.raises(ValidationError):
            sc.normalise_entered(bad, 6)


def test_phone_forms():
    assert sc.mask_phone("9161234567") == "+7 *** ***-45-67"
    assert sc.gateway_phone("9161234567") == "79161234567"


def stored(status=sc.CodeStatus.ACTIVE, code="123456", tries=0, expires=T0 + timedelta(minutes=5)):
    return sc.StoredCode(status=status, code_hash=sc.code_hash(KEY, "777", code), expires_at=expires, tries=tries)


def test_verdicts():
    V = sc.Verdict
    assert sc.judge(KEY, "777", "123456", stored(), T0, RULES) is V.ACCEPTED
    assert sc.judge(KEY, "777", "123456", stored(status=sc.CodeStatus.UNCERTAIN), T0, RULES) is V.ACCEPTED
    assert sc.judge(KEY, "777", "000000", stored(), T0, RULES) is V.WRONG
    assert sc.judge(KEY, "777", "000000", stored(tries=1), T0, RULES) is V.WRONG
    assert sc.judge(KEY, "777", "000000", stored(tries=2), T0, RULES) is V.LOCKED_NOW
    assert sc.judge(KEY, "777", "123456", stored(status=sc.CodeStatus.LOCKED, tries=3), T0, RULES) is V.LOCKED
    assert sc.judge(KEY, "777", "123456", stored(status=sc.CodeStatus.USED), T0, RULES) is V.USED
    assert sc.judge(KEY, "777", "123456", stored(), T0 + timedelta(minutes=5), RULES) is V.EXPIRED
    assert sc.judge(KEY, "777", "123456", stored(), T0 + timedelta(minutes=4, seconds=59), RULES) is V.ACCEPTED
    assert sc.judge(KEY, "777", "123456", None, T0, RULES) is V.NO_CODE
    for st in (sc.CodeStatus.PENDING, sc.CodeStatus.FAILED, sc.CodeStatus.SUPERSEDED):
        assert sc.judge(KEY, "777", "123456", stored(status=st), T0, RULES) is V.NO_CODE


def test_one_code_a_minute():
    A = sc.CodeStatus.ACTIVE
    assert sc.wait_before_new_code([], T0, RULES) == 0
    assert sc.wait_before_new_code([(T0, A)], T0 + timedelta(seconds=1), RULES) == 59
    assert sc.wait_before_new_code([(T0, A)], T0 + timedelta(seconds=59, milliseconds=500), RULES) == 1
    assert sc.wait_before_new_code([(T0, A)], T0 + timedelta(seconds=60), RULES) == 0
    # a pending send holds the interval; a failed one does not; an uncertain one counts only per hour
    assert sc.wait_before_new_code([(T0, sc.CodeStatus.PENDING)], T0 + timedelta(seconds=5), RULES) == 55
    assert sc.wait_before_new_code([(T0, sc.CodeStatus.FAILED)], T0 + timedelta(seconds=5), RULES) == 0
    assert sc.wait_before_new_code([(T0, sc.CodeStatus.UNCERTAIN)], T0 + timedelta(seconds=5), RULES) == 0


def test_five_codes_an_hour():
    sends = [(T0 + timedelta(minutes=2 * i), sc.CodeStatus.USED) for i in range(5)]
    now = T0 + timedelta(minutes=10)
    # the oldest of the five (T0) leaves the hour at T0 + 60 min
    assert sc.wait_before_new_code(sends, now, RULES) == 50 * 60
    assert sc.wait_before_new_code(sends, T0 + timedelta(hours=1), RULES) == 0
    failed = sends[:4] + [(T0 + timedelta(minutes=8), sc.CodeStatus.FAILED)]
    assert sc.wait_before_new_code(failed, now, RULES) == 0
    uncertain = sends[:4] + [(T0 + timedelta(minutes=8), sc.CodeStatus.UNCERTAIN)]
    assert sc.wait_before_new_code(uncertain, now, RULES) == 50 * 60


def test_policy():
    assert not sc.Policy.OFF.required_for(True)
    assert sc.Policy.ALL.required_for(False)
    assert sc.Policy.PER_CARD.required_for(True) and not sc.Policy.PER_CARD.required_for(False)
