"""GetCardInfo's read without a unit of work (docs/performance.md §5.6): on PostgreSQL ``card_summary`` reads
the card's status, holder and lots on a bare pooled connection in autocommit, 8 columns instead of 17. What
must hold: it reads what the unit of work's ``card_with_lots`` reads (lots equal, Decimal and aware UTC
times), prepared or as text; GetCardInfo answers the same CardView as the unit of work's path; a database
error is SQLAlchemy's (a lost connection invalidated, the next call works) and no connection goes back to
the pool in autocommit; and the ledger's one-pass balances equal the per-measure sums they replace."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from kkmtransfer.adapters import pg_raw
from kkmtransfer.adapters.db import make_engine
from kkmtransfer.domain import errors
from kkmtransfer.domain.ledger import CardLedger
from kkmtransfer.domain.model import ZERO, Lot, Measure
from kkmtransfer.service_layer import services as services_mod
from kkmtransfer.service_layer.services import APPLIED, BillingService
from kkmtransfer.service_layer.unit_of_work import UnitOfWork

from .helpers import ISSUED, new_id, request

CARDS = ("S1", "S2", "S3")


def _pg(db):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("card_summary is PostgreSQL's raw path")


def _seed(db):
    """S1: live, pending, expired, emptied and debt lots; S2: a live lot; S3: none."""
    db.add_card_range(1, 3, "S", 0, "Holder", issued=ISSUED)
    db.add_promotion("P", "deferred", delay_days=3, lifetime_days=10)
    db.add_promotion("B", "burns", lifetime_days=1)
    t0 = datetime.now(timezone.utc) - timedelta(days=5)
    db.register_operation(request("S1", accrued="50.00", time=t0))
    db.register_operation(request("S1", accrued="7.00", promotion_code="P"))         # pending
    db.register_operation(request("S1", accrued="9.00", time=t0, promotion_code="B"))  # expired
    db.register_operation(request("S1", receipt_sum="10.00", spent="50.00"))         # emptied
    sale = request("S1", receipt_sum="100.00", accrued="10.00", accumulation_delta="100.00")
    db.register_operation(sale)
    db.register_operation(request("S1", receipt_sum="10.00", spent="10.00"))
    assert db.register_operation(request("S1", kind="Return", receipt_sum="100.00", accrued="10.00",
                                         original_operation_id=sale.operation_id)).status == APPLIED  # a debt
    db.register_operation(request("S2", accrued="3.25", receipt_count_delta=1))


def _unit_of_work_reads(engine, number):
    with UnitOfWork(engine, single_statement=True) as uow:
        card, card_lots = uow.repo.card_with_lots(number)
    return None if card is None else (card["status"], card["holder"], card_lots)


def test_card_summary_reads_what_the_unit_of_work_reads(db):
    _pg(db)
    _seed(db)
    text_engine = make_engine(db.settings.database_url, pg_prepared=False)
    try:
        assert pg_raw.raw_summary_path(db.engine)
        for _ in range(7):  # past the fifth EXECUTE PostgreSQL may switch to the generic plan
            for number in CARDS + ("nope",):
                want = _unit_of_work_reads(db.engine, number)
                assert pg_raw.card_summary(db.engine, number) == want
                assert pg_raw.card_summary(text_engine, number) == want
        status, holder, card_lots = pg_raw.card_summary(db.engine, "S1")
        assert (status, holder) == ("Active", "Holder")
        assert {type(lot.remaining) for lot in card_lots} == {D}
        assert any(lot.remaining < 0 for lot in card_lots)  # the debt
        assert all(t.tzinfo is timezone.utc for lot in card_lots for t in (lot.available_from, lot.expires_at) if t)
        assert [str(lot.remaining) for lot in card_lots] == [str(lot.remaining) for lot in
                                                              _unit_of_work_reads(db.engine, "S1")[2]]
        assert pg_raw.card_summary(db.engine, "S3")[2] == []
    finally:
        text_engine.dispose()


def test_get_card_info_answers_what_the_unit_of_works_path_answers(db, monkeypatch):
    _pg(db)
    _seed(db)
    fast = {n: db.card_info(n) for n in CARDS}
    with pytest.raises(errors.CardNotFound):
        db.card_info("nope")
    monkeypatch.setattr(services_mod, "raw_summary_path", lambda engine: False)
    assert {n: db.card_info(n) for n in CARDS} == fast
    with pytest.raises(errors.CardNotFound):
        db.card_info("nope")
    info = fast["S1"].balances
    assert (info.bonus, info.bonus_pending) == (D("-10.00"), D("7.00")) and info.accumulation > 0
    assert fast["S2"].balances.bonus == D("3.25") and fast["S3"].balances.bonus == ZERO


def test_a_terminated_backend_under_card_summary_is_sqlalchemys_error_and_the_next_call_works(db, monkeypatch):
    _pg(db)
    db.add_card_range(1, 1, "E", 0, None, issued=ISSUED)
    db.card_info("E1")
    engine = db.engine
    victims = []
    real = pg_raw._send_prepared

    def kill_first(*args):  # the backend dies between the checkout and the EXECUTE
        if not victims:
            dbapi = args[2]
            victims.append(dbapi)
            with engine.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": dbapi.get_backend_pid()})
                admin.commit()
        return real(*args)

    monkeypatch.setattr(pg_raw, "_send_prepared", kill_first)
    with pytest.raises(DBAPIError) as caught:
        db.card_info("E1")
    assert caught.value.connection_invalidated  # SQLAlchemy's disconnect handling ran
    assert victims[0].closed
    assert db.card_info("E1").number == "E1"
    assert db.register_operation(request("E1", accrued="1.00")).status == APPLIED
    assert db.card_info("E1").balances.bonus == D("1.00")


def test_an_error_in_card_summary_leaves_no_autocommit_connection_in_the_pool(db, monkeypatch):
    _pg(db)
    db.add_card_range(1, 1, "A", 0, None, issued=ISSUED)
    db.engine.dispose()  # one pooled connection from here on
    db.card_info("A1")
    with db.engine.connect() as conn:  # after a read that succeeded
        assert conn.connection.dbapi_connection.autocommit is False
        pid = conn.connection.dbapi_connection.get_backend_pid()

    def broken(conn, fairy, dbapi, cursor, *args):
        cursor.execute("SELECT 1/0")

    monkeypatch.setattr(pg_raw, "_send_prepared", broken)
    with pytest.raises(DBAPIError, match="division by zero") as caught:
        db.card_info("A1")
    assert not caught.value.connection_invalidated
    monkeypatch.undo()
    with db.engine.connect() as conn:  # the same connection, kept (not an error to discard it for)
        assert conn.connection.dbapi_connection.autocommit is False
        assert conn.connection.dbapi_connection.get_backend_pid() == pid
        assert conn.execute(text("SHOW transaction_isolation")).scalar() == "read committed"
    assert db.card_info("A1").number == "A1"


def test_a_statement_listener_sees_get_card_info_through_the_unit_of_work(db):
    """An APM tool or a test counting statements: GetCardInfo's read goes through Connection.execute."""
    from sqlalchemy import event

    _pg(db)
    db.add_card_range(1, 1, "L", 0, None, issued=ISSUED)
    seen = []

    def listener(_conn, _cursor, statement, *args):
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", listener)
    try:
        assert not pg_raw.raw_summary_path(db.engine)
        assert db.card_info("L1").number == "L1"
    finally:
        event.remove(db.engine, "before_cursor_execute", listener)
    assert len(seen) == 1 and "c_number" in seen[0]
    assert pg_raw.raw_summary_path(db.engine)


def _balances_per_measure(lots, now, tz):
    """The ledger's balances as they were computed before the one-pass loop (a reference)."""
    def of(m):
        return [lot for lot in lots if lot.measure is m]

    def live(m):
        return sum((lot.remaining for lot in of(m) if lot.is_live(now)), ZERO)

    def pending(m):
        return sum((lot.remaining for lot in of(m) if lot.is_pending(now)), ZERO)

    burning: dict = {}
    for lot in of(Measure.BONUS):
        if lot.expires_at is not None and lot.remaining > 0 and not lot.is_expired(now):
            day = lot.expires_at.astimezone(tz).date()
            burning[day] = burning.get(day, ZERO) + lot.remaining
    next_day = min(burning) if burning else None
    return (live(Measure.BONUS), pending(Measure.BONUS), next_day, burning.get(next_day, ZERO),
            live(Measure.ACCUMULATION), pending(Measure.ACCUMULATION), int(live(Measure.RECEIPT_COUNT)),
            int(pending(Measure.RECEIPT_COUNT)))


def test_the_one_pass_balances_equal_the_per_measure_sums():
    rng = random.Random(20261130)
    now = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    tz = ZoneInfo("Europe/Moscow")
    times = [None, now, now - timedelta(hours=1), now + timedelta(hours=1), now + timedelta(hours=21),
             now + timedelta(days=3), now - timedelta(days=2)]
    measures = list(Measure)
    for _ in range(3000):
        lots = [Lot(i + 1, rng.choice(measures), D(rng.randint(-500, 5000)).scaleb(-2), rng.choice(times),
                    rng.choice(times), rng.random() < 0.2) for i in range(rng.randint(0, 8))]
        b = CardLedger(lots, now).balances(tz)
        got = (b.bonus, b.bonus_pending, b.next_expiry_date, b.next_expiry_amount, b.accumulation,
               b.accumulation_pending, b.receipt_count, b.receipt_count_pending)
        want = _balances_per_measure(lots, now, tz)
        assert got == want and [str(x) for x in got] == [str(x) for x in want], lots
