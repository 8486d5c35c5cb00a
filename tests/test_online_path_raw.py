"""Round 3 of the online path (docs/performance.md §5.2): the hot reads on the DBAPI cursor, and a sale's
operation written in the same statement as its entries and lots. What must hold: the raw reads give exactly
what SQLAlchemy's execution gives; a database error on them is SQLAlchemy's error (a lost connection is
invalidated, the next call works); the folded write stores the same rows as the separate INSERT and still
refuses a duplicate id."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from kkmtransfer.adapters import repository as repo_mod
from kkmtransfer.adapters.db import entries, lots, operations
from kkmtransfer.domain.model import Source
from kkmtransfer.service_layer.services import APPLIED
from kkmtransfer.service_layer.unit_of_work import UnitOfWork

from .helpers import ISSUED, new_id, request


def _pg(db):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("the raw path and the folded write are PostgreSQL's")


class _Spy:
    """Counts the raw reads: the DBAPI path does not pass through Connection.execute."""

    def __init__(self, monkeypatch):
        self.core = 0
        original = repo_mod.Connection.execute

        def execute(conn, stmt, *a, **kw):
            if any(stmt is r.clause for r in (repo_mod._CARD_WITH_LOTS, repo_mod._LOCK_AND_READ)):
                self.core += 1
            return original(conn, stmt, *a, **kw)

        monkeypatch.setattr(repo_mod.Connection, "execute", execute)


def test_the_raw_reads_equal_sqlalchemys_execution(db, monkeypatch):
    _pg(db)
    db.add_card_range(1, 2, "W", 0, "Holder", issued=ISSUED)
    db.add_promotion("P", "deferred", delay_days=3, lifetime_days=10)
    db.register_operation(request("W1", accrued="50.00"))
    db.register_operation(request("W1", accrued="7.00", promotion_code="P"))
    db.register_operation(request("W1", receipt_sum="10.00", spent="20.00"))
    sale = new_id()
    db.register_operation(request("W1", accrued="1.00", op_id=sale))
    spy = _Spy(monkeypatch)

    def reads():
        with UnitOfWork(db.engine, single_statement=True) as uow:
            got = [uow.repo.card_with_lots(n) for n in ("W1", "W2", "nope")]
        with UnitOfWork(db.engine, write=True) as uow:
            got.append(uow.repo.lock_card_for("W1", sale))
            got.append(uow.repo.lock_card_for("W1", new_id())[1:])
            got.append(uow.repo.hold_named(sale))
        return got

    raw = reads()
    assert spy.core == 0  # the DBAPI path

    def listener(*args):
        pass

    event.listen(db.engine, "before_cursor_execute", listener)  # a statement listener: SQLAlchemy's path
    try:
        core = reads()
    finally:
        event.remove(db.engine, "before_cursor_execute", listener)
    assert spy.core == 5
    assert raw == core
    card, card_lots = raw[0]
    assert card["number"] == "W1" and card["created_at"].tzinfo is not None
    assert {type(lot.remaining) for lot in card_lots} == {D}
    assert raw[3][0]["id"] == sale and raw[3][0]["bonus_accrued"] == D("1.00")


def test_a_database_error_on_a_raw_read_is_sqlalchemys_and_the_next_call_works(db):
    _pg(db)
    db.add_card_range(1, 1, "E", 0, None, issued=ISSUED)
    with UnitOfWork(db.engine, single_statement=True) as uow:
        pid = uow.conn.connection.dbapi_connection.get_backend_pid()
        with db.engine.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            admin.commit()
        with pytest.raises(DBAPIError) as caught:
            uow.repo.card_with_lots("E1")
    assert caught.value.connection_invalidated  # SQLAlchemy's disconnect handling ran
    assert db.card_info("E1").number == "E1"
    assert db.register_operation(request("E1", accrued="1.00")).status == APPLIED


def test_the_folded_write_stores_what_the_separate_statements_stored(db):
    _pg(db)
    db.add_card_range(1, 2, "F", 0, None, issued=ISSUED)
    for card in ("F1", "F2"):
        db.register_operation(request(card, accrued="30.00"))
    folded, split = new_id(), new_id()
    sent = request("F1", receipt_sum="40.00", accrued="2.00", spent="5.00", op_id=folded,
                   time=datetime(2031, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=3))))
    db.clock = lambda: datetime(2031, 3, 1, 21, 0, tzinfo=timezone.utc)
    assert db.register_operation(sent, actor="kassa").status == APPLIED
    with db.engine.connect() as conn:  # the typed binds: the time as UTC, the day in the service's zone
        row = conn.execute(select(operations).where(operations.c.id == folded)).mappings().one()
        naive = conn.execute(text("SELECT operation_time FROM operations WHERE id = :i"), {"i": folded}).scalar()
    assert row["operation_time"] == sent.operation_time and naive == datetime(2031, 3, 1, 20, 30)
    assert row["created_at"] == db.clock() and row["business_date"] == sent.operation_time.astimezone(
        db.settings.tz).date()
    original = repo_mod.Repository.insert_operation_with_moves

    def separate(self, values, moves, now):
        self.insert_operation(**values)
        self.save_moves(values["card_number"], values["id"], moves, now)

    repo_mod.Repository.insert_operation_with_moves = separate
    try:
        assert db.register_operation(request("F2", receipt_sum="40.00", accrued="2.00", spent="5.00",
                                             op_id=split), actor="kassa").status == APPLIED
    finally:
        repo_mod.Repository.insert_operation_with_moves = original

    def stored(op_id, card):
        with db.engine.connect() as conn:
            op = dict(conn.execute(select(operations).where(operations.c.id == op_id)).mappings().one())
            rows = conn.execute(select(entries.c.measure, entries.c.role, entries.c.amount)
                                .where(entries.c.operation_id == op_id).order_by(entries.c.id)).all()
            remaining = conn.execute(select(lots.c.measure, lots.c.remaining).where(lots.c.card_number == card)
                                     .order_by(lots.c.id)).all()
        for key in ("id", "card_number", "created_at", "operation_time", "business_date", "content_hash"):
            op.pop(key)
        return op, [tuple(r) for r in rows], [tuple(r) for r in remaining]

    assert stored(folded, "F1") == stored(split, "F2")
    assert stored(folded, "F1")[0]["actor"] == "kassa" and stored(folded, "F1")[0]["bonus_spent"] == D("5.00")
    assert db.card_info("F1").balances == db.card_info("F2").balances


def test_the_folded_write_refuses_an_id_that_exists(db):
    _pg(db)
    db.add_card_range(1, 2, "D", 0, None, issued=ISSUED)
    db.register_operation(request("D1", accrued="30.00"))
    db.register_operation(request("D2", accrued="30.00"))
    taken = new_id()
    db.register_operation(request("D2", accrued="1.00", op_id=taken))
    before = db.card_info("D1").balances
    with UnitOfWork(db.engine, write=True) as uow:  # the id is another card's: the lock-and-read misses it
        ledger_req = request("D1", receipt_sum="10.00", accrued="1.00", spent="2.00", op_id=taken)
        _, card, card_lots = uow.repo.lock_card_for("D1", new_id())
        assert card is not None
        with pytest.raises(IntegrityError):
            db.apply(_Renamed(uow.repo, taken), ledger_req, Source.ONLINE, db.clock())
    assert db.card_info("D1").balances == before


class _Renamed:
    """A repository whose lock-and-read does not see the operation (as a race with another card's insert
    would leave it): the folded INSERT must then fail on the primary key."""

    def __init__(self, repo, hidden):
        self._repo, self._hidden = repo, hidden

    def lock_card_for(self, number, operation_id):
        existing, card, card_lots = self._repo.lock_card_for(number, operation_id)
        return (None if operation_id == self._hidden else existing), card, card_lots

    def __getattr__(self, name):
        return getattr(self._repo, name)
