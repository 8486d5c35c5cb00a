"""Gift certificates on the one ledger: the nightly write-off (idempotent, resumable) and a property test
of random operation streams against a model and the report's identity."""
from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import func, select

from kkmtransfer.adapters import regulation
from kkmtransfer.adapters.db import documents, entries, lots, operations
from kkmtransfer.domain import errors
from kkmtransfer.domain.certificates import CertificateOperationRequest, CertKind
from kkmtransfer.service_layer.certificates import CertificateService
from kkmtransfer.service_layer.nightly import Nightly
from kkmtransfer.service_layer.reports import Reports

from .conftest import empty_tables
from .helpers import new_id, read_all, request

MSK = ZoneInfo("Europe/Moscow")



def msk(y, m, d, hh=12, mm=0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=MSK)


def op(number, kind, amount, time, original=None, pin=None):
    return CertificateOperationRequest.build(operation_id=new_id(), number=number, kkm="KKM-1", operation_time=time,
                                             kind=kind, amount=D(amount), original_operation_id=original, pin=pin)


def count(db, table, *where) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


@pytest.fixture
def expiring(db):
    """Card N1 with bonuses burning on Nov 12; certificates 1-3 sold Nov 10 for 2 days (burn Nov 12),
    4 sold for 30 days; 1 partly redeemed, 2 used up."""
    certs = CertificateService(db)
    db.add_card_range(1, 1, "N", 0, None)
    db.add_promotion("SHORT", "short", lifetime_days=2)
    certs.add_range(1, 4, D("1000.00"), valid_days=2)
    certs.add_range(5, 5, D("1000.00"), valid_days=30)
    t = msk(2026, 11, 10)
    db.clock.set(t)
    db.register_operation(request("N1", accrued="10.00", time=t, promotion_code="SHORT"))
    for n in ("1", "2", "3", "5"):
        certs.register(op(n, "Sell", "1000.00", t))
    redeem1 = certs.register(op("1", "Redeem", "300.00", t))
    certs.register(op("2", "Redeem", "1000.00", t))
    return db, certs, redeem1


def test_the_nightly_writes_expired_certificates_off_in_the_write_off_document(expiring):
    db, certs, redeem1 = expiring
    db.clock.set(msk(2026, 11, 11, 23, 59))
    assert certs.show("1")[0].status == "Active"
    db.clock.set(msk(2026, 11, 12, 0, 0))  # the start of Nov 12: burnt, before any nightly
    assert [certs.show(n)[0].status for n in "12345"] == ["Expired", "Redeemed", "Expired", "Issued", "Active"]
    with pytest.raises(errors.DomainError) as info:
        certs.register(op("1", "Redeem", "1.00", db.clock()))
    assert info.value.code == "Client.CertificateExpired"
    with pytest.raises(errors.DomainError) as info:  # nothing goes back onto a burnt certificate
        certs.register(op("1", "Refund", "1.00", db.clock(), original=redeem1.operation_id))
    assert info.value.code == "Client.CertificateExpired"

    db.clock.set(msk(2026, 11, 13, 2, 0))
    [report] = Nightly(db, batch=1).run(date(2026, 11, 13))   # one lot per transaction
    assert report.expired_lots == 3 and report.write_off_lines == 3
    [write_off] = [d for d in
                   read_all(db.engine, select(documents)).mappings().all() if d["kind"] == "WriteOff"]
    with db.engine.connect() as conn:
        lines = conn.execute(select(operations.c.card_number, operations.c.kind,
                                    func.sum(entries.c.amount), entries.c.measure)
                             .join(entries, entries.c.operation_id == operations.c.id)
                             .where(operations.c.document_id == write_off["id"])
                             .group_by(operations.c.card_number, operations.c.kind, entries.c.measure)
                             .order_by(operations.c.card_number)).all()
    # the card's line is the card's alone; each certificate has its own line on its own account
    assert [tuple(line) for line in lines] == [
        ("N1", "Expiry", D("-10.00"), "bonus"),
        ("cert:1", "Expiry", D("-700.00"), "certificate"),
        ("cert:3", "Expiry", D("-1000.00"), "certificate")]
    assert [h.kind for h in db.card_operations("N1", date(2026, 11, 1), date(2026, 11, 30))] == ["Sale", "Expiry"]

    r = certs.report(date(2026, 11, 1), date(2026, 11, 30))
    assert (r.sold, r.redeemed, r.expired, r.closing, r.liability) == (
        D("4000.00"), D("1300.00"), D("1700.00"), D("1000.00"), D("1000.00"))
    assert r.balanced()
    by_status = {s: (n, bal) for s, n, _, bal in r.by_status}
    assert by_status == {"Expired": (2, D("0.00")), "Redeemed": (1, D("0.00")), "Issued": (1, D("0.00")),
                         "Active": (1, D("1000.00"))}
    # again: nothing more
    snapshot = (count(db, operations), count(db, entries))
    [again] = Nightly(db).run(date(2026, 11, 13))
    assert again.skipped and (count(db, operations), count(db, entries)) == snapshot
    assert Reports(db).verify() == []


def test_a_write_off_that_fails_mid_way_is_completed_by_the_next_run(expiring, monkeypatch):
    db, certs, _ = expiring
    db.clock.set(msk(2026, 11, 13, 2, 0))
    real = regulation.expire_batch
    calls = Counter()

    def crash_after_one(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(regulation, "expire_batch", crash_after_one)
    with pytest.raises(RuntimeError):
        Nightly(db, batch=1).run(date(2026, 11, 13))
    burnt = count(db, entries, entries.c.role == "expiry")
    assert burnt == 1
    monkeypatch.setattr(regulation, "expire_batch", real)
    db.clock.set(msk(2026, 11, 13, 2, 11))  # the dead run's lease has run out
    [report] = Nightly(db, batch=1).run(date(2026, 11, 13))
    assert report.expired_lots == 2
    expiry = read_all(db.engine, select(entries.c.lot_id).where(entries.c.role == "expiry")).scalars().all()
    assert len(expiry) == len(set(expiry)) == 3       # each lot burnt once
    assert count(db, lots, lots.c.remaining != 0, lots.c.expires_at <= msk(2026, 11, 13, 0, 0)) == 0
    r = certs.report(date(2026, 11, 1), date(2026, 11, 30))
    assert r.expired == D("1700.00") and r.liability == r.closing == D("1000.00")
    assert Reports(db).verify() == []


# -- the property: random streams of operations ----------------------------------------------------
N_CERTS = 4
steps = st.lists(st.one_of(
    st.tuples(st.just("sell"), st.integers(0, N_CERTS - 1)),
    st.tuples(st.just("redeem"), st.integers(0, N_CERTS - 1), st.integers(1, 700)),
    st.tuples(st.just("refund"), st.integers(0, N_CERTS - 1), st.integers(1, 700)),
    st.tuples(st.just("return"), st.integers(0, N_CERTS - 1)),
    st.tuples(st.just("days"), st.integers(1, 4)),
), min_size=1, max_size=25)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=steps)
def test_random_streams_keep_the_report_identity_and_the_ledger_clean(db, stream):
    empty_tables(db.engine)
    db.clock.set(msk(2026, 3, 1))
    certs = CertificateService(db)
    nominal = D("500.00")
    certs.add_range(0, 1, nominal, kind=CertKind.MULTI_USE, valid_days=5)
    certs.add_range(2, 3, nominal, kind=CertKind.SINGLE_USE, valid_days=5)
    # a model of each certificate: balance, expiry, last sale, its redemptions' refundable amounts
    model = {str(i): dict(sold=None, balance=D("0.00"), expires=None, redeems=[]) for i in range(N_CERTS)}
    expected = Counter()
    for step in stream:
        now = db.clock()
        if step[0] == "days":
            db.clock.set(now + timedelta(days=step[1]))
            Nightly(db).run()
            _burn(model, db.clock(), expected)
            continue
        n = str(step[1])
        m = model[n]
        live = m["sold"] is not None and m["expires"] > now
        try:
            if step[0] == "sell":
                result = certs.register(op(n, "Sell", nominal, now))
                assert m["sold"] is None, "sold twice"
                day = now.astimezone(MSK).date()
                m.update(sold=result.operation_id, balance=nominal, redeems=[],
                         expires=datetime.combine(day + timedelta(days=5), datetime.min.time(), tzinfo=MSK))
                expected["sold"] += nominal
            elif step[0] == "redeem":
                amount = D(step[2])
                result = certs.register(op(n, "Redeem", amount, now))
                assert live and 0 < amount <= m["balance"], ("redeemed beyond the model", m, amount)
                rest = m["balance"] - amount if int(n) < 2 else D("0.00")
                expected["redeemed"] += amount
                expected["forfeited"] += m["balance"] - amount - rest
                m["balance"] = rest
                m["redeems"].append([result.operation_id, amount])
            elif step[0] == "refund":
                if not m["redeems"]:
                    continue
                rid, left = m["redeems"][-1]
                amount = min(D(step[2]), left) if step[2] % 3 and left else left + 1  # sometimes too much
                certs.register(op(n, "Refund", amount, now, original=rid))
                assert live and amount <= left, ("refunded beyond the model", m, amount)
                m["redeems"][-1][1] -= amount
                m["balance"] += amount
                expected["refunded"] += amount
            else:  # return of the sale
                if m["sold"] is None:
                    continue
                certs.register(op(n, "ReturnSale", nominal, now, original=m["sold"]))
                assert live and not m["redeems"], ("took back a used certificate", m)
                m.update(sold=None, balance=D("0.00"), expires=None)
                expected["returned"] += nominal
        except errors.DomainError as exc:
            # refused: the model agrees it had to be
            if step[0] == "sell":
                assert m["sold"] is not None, exc.message
            elif step[0] == "redeem":
                assert not live or D(step[2]) > m["balance"] or m["balance"] == 0, (exc.message, m)
            elif step[0] == "refund":
                assert not live or exc.code == "Client.ReturnExceedsSale", (exc.message, m)
            else:
                assert not live or m["redeems"], (exc.message, m)
    db.clock.set(db.clock() + timedelta(days=1))
    Nightly(db).run()
    _burn(model, db.clock(), expected)
    r = certs.report(date(2026, 1, 1), db.clock().astimezone(MSK).date())
    assert r.sold - r.returned - r.redeemed - r.forfeited + r.refunded - r.expired == r.liability == r.closing
    got = {k: getattr(r, k) for k in ("sold", "returned", "redeemed", "forfeited", "refunded", "expired")}
    assert got == {k: expected[k] + D("0.00") for k in got}
    assert {k: certs.show(k)[0].balance for k in model} == {k: mm["balance"] for k, mm in model.items()}
    assert Reports(db).verify() == []


def _burn(model, now, expected):
    """The model's expiry: what a certificate held when its validity ended is gone."""
    for mm in model.values():
        if mm["sold"] is not None and mm["expires"] <= now and mm["balance"]:
            expected["expired"] += mm["balance"]
            mm["balance"] = D("0.00")
