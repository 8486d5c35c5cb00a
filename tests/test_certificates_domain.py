"""The pure rules of gift certificates: requests, states, the ledger plan, PINs (no database)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from kkmtransfer.domain import errors
from kkmtransfer.domain.certificates import (
    Certificate,
    CertificateLedger,
    CertificateOperationRequest,
    CertKind,
    CertOpKind,
    State,
    check_can_use,
    hash_pin,
    new_pin,
    numbers_of_range,
    verify_pin,
)
from kkmtransfer.domain.model import Role

NOW = datetime(2026, 11, 29, 12, tzinfo=timezone.utc)


def req(**kw):
    base = dict(operation_id="6b1f3c1e-2f4a-4d7e-9a51-0c4d1e8a7f10", number="42", kkm="K", operation_time=NOW,
                kind="Redeem", amount="10.00")
    base.update(kw)
    return CertificateOperationRequest.build(**base)


def cert(state=State.ACTIVE, blocked=False, expires_at=NOW + timedelta(days=1), **kw):
    base = dict(number="42", kind=CertKind.MULTI_USE, nominal=D("100.00"), state=state, blocked=blocked,
                block_reason=None, valid_days=None, valid_until=None, expires_at=expires_at, pin_hash=None,
                pin_failures=0, sale_operation_id=None)
    base.update(kw)
    return Certificate(**base)


@pytest.mark.parametrize("kw,fragment", [
    (dict(amount="0"), "Amount"), (dict(amount="-1"), "Amount"), (dict(amount="1.001"), "Amount"),
    (dict(kind="Sale"), "Kind"), (dict(kind="Refund"), "OriginalOperationId"),
    (dict(original_operation_id="6b1f3c1e-2f4a-4d7e-9a51-0c4d1e8a7f11"), "OriginalOperationId"),
    (dict(number="x" * 28), "Number"), (dict(operation_time=datetime(2026, 1, 1)), "OperationTime"),
])
def test_bad_requests_are_validation_errors(kw, fragment):
    with pytest.raises(errors.ValidationError) as info:
        req(**kw)
    assert fragment in info.value.message


def test_the_content_hash_covers_what_the_operation_does_not_the_pin():
    a = req()
    assert req(pin="1234", store="S1", receipt_number="9").content_hash() == a.content_hash()
    for other in (req(amount="10.01"), req(number="43"), req(kkm="K2"), req(kind="Sell"),
                  req(operation_time=NOW + timedelta(seconds=1))):
        assert other.content_hash() != a.content_hash()


@pytest.mark.parametrize("c,kind,code", [
    (cert(State.ISSUED), CertOpKind.REDEEM, "Client.CertificateNotActive"),
    (cert(State.ISSUED), CertOpKind.REFUND, "Client.CertificateNotActive"),
    (cert(State.ACTIVE), CertOpKind.SELL, "Client.CertificateNotActive"),
    (cert(State.ISSUED, blocked=True), CertOpKind.SELL, "Client.CertificateNotActive"),
    (cert(State.REDEEMED), CertOpKind.REDEEM, "Client.CertificateNotActive"),
    (cert(blocked=True), CertOpKind.REDEEM, "Client.CertificateNotActive"),
    (cert(blocked=True), CertOpKind.RETURN_SALE, "Client.CertificateNotActive"),
    (cert(expires_at=NOW), CertOpKind.REDEEM, "Client.CertificateExpired"),
    (cert(expires_at=NOW), CertOpKind.REFUND, "Client.CertificateExpired"),
])
def test_what_each_state_refuses(c, kind, code):
    with pytest.raises(errors.DomainError) as info:
        check_can_use(c, NOW, kind)
    assert info.value.code == code


def test_what_each_state_allows():
    check_can_use(cert(State.ISSUED), NOW, CertOpKind.SELL)
    check_can_use(cert(), NOW, CertOpKind.REDEEM)
    check_can_use(cert(State.REDEEMED), NOW, CertOpKind.REFUND)
    check_can_use(cert(blocked=True), NOW, CertOpKind.REFUND)  # money may go back onto a blocked one
    assert cert(expires_at=NOW).status(NOW) == "Expired" and cert(blocked=True).status(NOW) == "Blocked"


def test_the_ledger_plan_of_single_and_multi_use():
    multi = CertificateLedger([], NOW)
    multi.sell(D("100.00"), NOW + timedelta(days=1))
    assert multi.redeem(D("30.00"), single_use=False) == 0 and multi.balance() == D("70.00")
    with pytest.raises(errors.DomainError) as info:
        multi.redeem(D("70.01"), single_use=False)
    assert info.value.code == "Client.InsufficientCertificateBalance" and multi.balance() == D("70.00")
    single = CertificateLedger([], NOW)
    single.sell(D("100.00"), None)
    assert single.redeem(D("30.00"), single_use=True) == D("70.00") and single.balance() == 0
    assert [(m.role, m.amount) for m in single.moves] == [
        (Role.CREDIT, D("100.00")), (Role.SPEND, D("-30.00")), (Role.FORFEIT, D("-70.00"))]


def test_pins_are_random_hashed_and_checked():
    pins = {new_pin() for _ in range(200)}
    assert len(pins) > 190 and all(len(p) == 8 and p.isdigit() for p in pins)
    pin = new_pin()
    stored = hash_pin(pin)
    assert pin not in stored and stored != hash_pin(pin)   # salted
    assert verify_pin(pin, stored) and not verify_pin(None, stored) and not verify_pin("", stored)
    assert not verify_pin(str((int(pin) + 1) % 10 ** 8).zfill(8), stored)
    assert not verify_pin(pin, "garbage")


def test_ranges():
    assert numbers_of_range(9, 11, "G", 2) == ["G09", "G10", "G11"]
    with pytest.raises(errors.ValidationError):
        numbers_of_range(5, 4)
    with pytest.raises(errors.ValidationError):
        numbers_of_range(0, 1_000_000)
    with pytest.raises(errors.ValidationError):
        numbers_of_range(1, 2, "x" * 27)
