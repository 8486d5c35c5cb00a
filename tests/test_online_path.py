"""The online path's few round trips: the card, its lots and the operation's id read under the card's lock in
one go, GetCardInfo's one statement, the entries and the lots' new remaining written at once. What they
must keep: a writer that waited for the card's lock sees what the previous writer committed (no overdraft,
exactly once), and the reads give what the separate queries gave."""
from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from kkmtransfer.adapters.db import operations
from kkmtransfer.adapters.repository import Repository
from kkmtransfer.domain import errors
from kkmtransfer.service_layer.services import ALREADY_APPLIED, APPLIED
from kkmtransfer.service_layer.unit_of_work import UnitOfWork

from .helpers import ISSUED, new_id, request


def test_the_one_statement_reads_give_what_the_separate_queries_gave(db):
    db.add_card_range(1, 2, "R", 0, "Holder", issued=ISSUED)
    db.add_promotion("P", "deferred", delay_days=3, lifetime_days=10)
    db.add_promotion("B", "burns", lifetime_days=1)
    t0 = datetime.now(timezone.utc) - timedelta(days=5)
    db.register_operation(request("R1", accrued="50.00", time=t0))
    db.register_operation(request("R1", accrued="7.00", promotion_code="P"))        # pending lot
    db.register_operation(request("R1", accrued="9.00", time=t0, promotion_code="B"))  # an expired lot
    db.register_operation(request("R1", receipt_sum="10.00", spent="50.00"))        # an emptied lot
    sale = new_id()
    db.register_operation(request("R1", accrued="1.00", op_id=sale))
    with UnitOfWork(db.engine) as uow:
        repo: Repository = uow.repo
        for number in ("R1", "R2"):
            card, lots = repo.card_with_lots(number)
            assert card == dict(repo.get_card(number))
            assert lots == repo.load_lots(number)
        assert len(repo.card_with_lots("R1")[1]) >= 4  # bonus (live, pending, expired), accumulation, count
        assert repo.card_with_lots("R2")[1] == []
        assert repo.card_with_lots("nope") == (None, [])
    with UnitOfWork(db.engine, write=True) as uow:
        existing, card, lots = uow.repo.lock_card_for("R1", sale)
        assert existing == dict(uow.repo.get_operation(sale)) and card["number"] == "R1"
        assert lots == uow.repo.load_lots("R1")
        assert uow.repo.lock_card_for("R1", new_id())[0] is None
        # no such card: the operation is still looked up (a retry answers AlreadyApplied or a conflict)
        assert uow.repo.lock_card_for("nope", sale) == (existing, None, None)
        assert uow.repo.lock_card_for("nope", new_id()) == (None, None, None)
    info = db.card_info("R1").balances
    assert (info.bonus, info.bonus_pending) == (D("1.00"), D("7.00"))


@pytest.mark.slow
def test_spends_racing_on_one_card_never_take_more_than_it_had(db):
    """Writers in threads (each its own transaction) on one card: each must read the lots as the writer
    before it committed them, after waiting for the lock."""
    db.add_card_range(1, 1, "S", 0, None, issued=ISSUED)
    db.register_operation(request("S1", accrued="100.00"))
    n = 24
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def spend(i):
        barrier.wait()
        try:
            results[i] = db.register_operation(request("S1", receipt_sum="50.00", spent="9.00")).status
        except errors.InsufficientBonus:
            results[i] = "InsufficientBonus"
        except Exception as exc:  # noqa: BLE001 - reported by the assertion
            results[i] = repr(exc)

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert Counter(results) == {APPLIED: 11, "InsufficientBonus": n - 11}, results
    assert db.card_info("S1").balances.bonus == D("1.00")


@pytest.mark.postgres
def test_a_writer_that_waited_for_the_lock_sees_the_operation_committed_meanwhile(db):
    """The same OperationId on the same card: the second writer waits for the card's lock while the first
    holds it with the operation written; when the first commits, the second answers AlreadyApplied."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    db.add_card_range(1, 1, "L", 0, None, issued=ISSUED)
    db.register_operation(request("L1", accrued="10.00"))
    op = request("L1", receipt_sum="20.00", spent="10.00")
    outcome: list[object] = []

    with UnitOfWork(db.engine, write=True) as first:
        assert db.apply(first.repo, op, _online(), db.clock()).status == APPLIED  # holds the card's lock
        second = threading.Thread(target=lambda: outcome.append(db.register_operation(op).status))
        second.start()
        time.sleep(1.0)
        assert outcome == []  # waiting for the lock
        first.commit()
    second.join(30)
    assert outcome == [ALREADY_APPLIED]
    assert db.card_info("L1").balances.bonus == D("0.00")


@pytest.mark.postgres
def test_a_spend_that_waited_for_the_lock_sees_the_balance_left_by_the_first(db):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    db.add_card_range(1, 1, "M", 0, None, issued=ISSUED)
    db.register_operation(request("M1", accrued="10.00"))
    outcome: list[object] = []

    def second_spend():
        try:
            outcome.append(db.register_operation(request("M1", receipt_sum="20.00", spent="6.00")).status)
        except errors.InsufficientBonus:
            outcome.append("InsufficientBonus")

    with UnitOfWork(db.engine, write=True) as first:
        db.apply(first.repo, request("M1", receipt_sum="20.00", spent="6.00"), _online(), db.clock())
        t = threading.Thread(target=second_spend)
        t.start()
        time.sleep(1.0)
        assert outcome == []
        first.commit()
    t.join(30)
    assert outcome == ["InsufficientBonus"]  # 4.00 left after the first: the stale 10.00 must not be seen
    assert db.card_info("M1").balances.bonus == D("4.00")


@pytest.mark.postgres
def test_the_same_id_inserted_by_another_card_meanwhile_is_a_conflict(db):
    """A concurrent writer on another card inserts the id first: the unique key decides, once."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    db.add_card_range(1, 2, "N", 0, None, issued=ISSUED)
    op_id = new_id()
    outcome: list[object] = []

    def on_n2():
        try:
            outcome.append(db.register_operation(request("N2", accrued="1.00", op_id=op_id)).status)
        except errors.OperationConflict:
            outcome.append("Conflict")

    with UnitOfWork(db.engine, write=True) as first:
        db.apply(first.repo, request("N1", accrued="1.00", op_id=op_id), _online(), db.clock())
        t = threading.Thread(target=on_n2)
        t.start()
        time.sleep(1.0)
        first.commit()
    t.join(30)
    assert outcome == ["Conflict"]
    with db.engine.connect() as conn:
        assert conn.execute(operations.select().where(operations.c.id == op_id)).mappings().one()["card_number"] \
            == "N1"


def _online():
    from kkmtransfer.domain.model import Source

    return Source.ONLINE


def test_a_soap_call_does_not_force_a_full_garbage_collection(soap, db, monkeypatch):
    """spyne would run gc.collect() after a call once a second per process: tens of milliseconds with the
    GIL held, every thread of the worker stalled (the largest item of the online profile)."""
    import gc

    db.add_card_range(1, 1, "G", 0, None, issued=ISSUED)
    calls = []
    real = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(3):
        assert soap.service.GetCardInfo("G1").CardNumber == "G1"
        time.sleep(1.1)
    assert calls == []
