"""Server-side prepared statements on the raw path (docs/performance.md §5.3, KKMTRANSFER_PG_PREPARED): each
pooled connection PREPAREs the hot statements once and sends EXECUTE. What must hold: the answers and the
rows written equal the text path's; a connection that was terminated, or whose session was reset
(``DISCARD ALL``, as a pooler does), costs the register nothing; with the setting off nothing is prepared."""
from __future__ import annotations

from decimal import Decimal as D

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.pool import NullPool

from kkmtransfer.adapters import pg_raw
from kkmtransfer.adapters.db import entries, lots, make_engine, operations
from kkmtransfer.config import ConfigError, Settings
from kkmtransfer.service_layer.holds import HoldService
from kkmtransfer.service_layer.services import APPLIED, BillingService
from kkmtransfer.service_layer.unit_of_work import UnitOfWork

from .helpers import ISSUED, new_id, op_dict, request

KKM_NAMES = {"kkm_card", "kkm_lock", "kkm_lock_2", "kkm_sale", "kkm_moves"}


def _pg(db):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")


def _prepared_names(engine) -> list[set[str]]:
    """pg_prepared_statements of every connection idle in the engine's pool (the view is per session)."""
    held = [engine.raw_connection() for _ in range(engine.pool.checkedin())]
    try:
        found = []
        for fairy in held:
            cur = fairy.dbapi_connection.cursor()
            cur.execute("SELECT name FROM pg_prepared_statements")
            found.append({name for (name,) in cur.fetchall()})
            cur.close()
            fairy.dbapi_connection.rollback()
        return found
    finally:
        for fairy in held:
            fairy.close()


def _reset_sessions(engine, statement: str = "DISCARD ALL") -> int:
    """``statement`` on every connection idle in the pool, outside a transaction (as a pooler resets)."""
    held = [engine.raw_connection() for _ in range(engine.pool.checkedin())]
    for fairy in held:
        dbapi = fairy.dbapi_connection
        dbapi.autocommit = True
        dbapi.cursor().execute(statement)
        dbapi.autocommit = False
    for fairy in held:
        fairy.close()
    return len(held)


@pytest.fixture
def sent(monkeypatch) -> list[str]:
    """What ``_send_prepared`` sent, call after call."""
    out: list[str] = []
    original = pg_raw._send_prepared

    def spy(*args):
        out.append(original(*args))
        return out[-1]

    monkeypatch.setattr(pg_raw, "_send_prepared", spy)
    return out


def _prepared_again(sent: list[str], since: int) -> bool:
    return any(s.startswith("DEALLOCATE ALL; PREPARE") for s in sent[since:])


@pytest.fixture
def text_db(db):
    """The same ledger with KKMTRANSFER_PG_PREPARED=off."""
    _pg(db)
    engine = make_engine(db.settings.database_url, pg_prepared=False)
    yield BillingService(engine, db.settings, db.clock)
    engine.dispose()


def _seed(db):
    db.add_card_range(1, 2, "P", 0, "Holder", issued=ISSUED)
    db.add_promotion("PR", "deferred", delay_days=3, lifetime_days=10)
    for card in ("P1", "P2"):
        db.register_operation(request(card, accrued="50.00"))
        db.register_operation(request(card, accrued="7.00", promotion_code="PR"))
    sale = new_id()
    db.register_operation(request("P1", receipt_sum="10.00", accrued="1.25", spent="3.00", op_id=sale))
    hold = new_id()
    HoldService(db).reserve(hold, "P1", "KKM-1", D("4.50"))
    return sale, hold


def _reads(billing, sale, hold):
    with UnitOfWork(billing.engine, single_statement=True) as uow:
        got = [uow.repo.card_with_lots(n) for n in ("P1", "P2", "nope", "P1" * 20)]
    with UnitOfWork(billing.engine, write=True) as uow:
        got.append(uow.repo.lock_card_for("P1", sale))
        got.append(uow.repo.lock_card_for("P1", hold)[1:])
        got.append(uow.repo.hold_named(hold))
        got.append(uow.repo.lock_card_for("P2", new_id()))
    return got


def test_prepared_reads_equal_the_text_path(db, text_db):
    _pg(db)
    sale, hold = _seed(db)
    for _ in range(8):  # past the fifth execution PostgreSQL may switch to the generic plan
        prepared = _reads(db, sale, hold)
    texted = _reads(text_db, sale, hold)
    assert prepared == texted
    card, card_lots = prepared[0]
    assert card["number"] == "P1" and card["created_at"].tzinfo is not None
    assert {type(lot.remaining) for lot in card_lots} == {D} and card_lots
    assert prepared[2] == (None, []) and prepared[3] == (None, [])  # a number longer than the column
    existing = prepared[4][0]
    assert existing["id"] == sale and existing["bonus_spent"] == D("3.00")
    assert existing["operation_time"].tzinfo is not None
    assert prepared[6]["amount"] == D("4.50") and prepared[6]["expires_at"].tzinfo is not None
    assert KKM_NAMES <= set().union(*_prepared_names(db.engine))
    assert set().union(*_prepared_names(text_db.engine)) == set()


def test_prepared_writes_store_what_the_text_path_stored(db, text_db):
    _pg(db)
    db.add_card_range(1, 2, "W", 0, None, issued=ISSUED)
    for card in ("W1", "W2"):
        db.register_operation(request(card, accrued="30.00"))
    ids = {}
    for card, billing in (("W1", db), ("W2", text_db)):
        for i in range(7):  # the generic plan is forced for the writes: several, so that it is used
            ids[card, i] = new_id()
            assert billing.register_operation(request(card, receipt_sum="40.00", accrued="2.00", spent="1.00",
                                                      op_id=ids[card, i]), actor="kassa").status == APPLIED
        hold = new_id()  # a reserve and its confirmation (the entries-and-lots write)
        HoldService(billing).reserve(hold, card, "KKM-1", D("3.00"))
        assert billing.register_operation(request(card, receipt_sum="20.00", spent="2.00", op_id=hold)
                                          ).status == APPLIED

    def stored(card):
        with db.engine.connect() as conn:
            ops = [dict(r) for r in conn.execute(select(operations).where(operations.c.card_number == card)
                                                 .order_by(operations.c.created_at, operations.c.id)).mappings()]
            moved = conn.execute(select(entries.c.measure, entries.c.role, entries.c.amount)
                                 .where(entries.c.card_number == card).order_by(entries.c.id)).all()
            remaining = conn.execute(select(lots.c.measure, lots.c.remaining, lots.c.expires_at)
                                     .where(lots.c.card_number == card).order_by(lots.c.id)).all()
        for op in ops:
            for key in ("id", "card_number", "created_at", "operation_time", "business_date", "content_hash",
                        "original_operation_id", "note"):
                op.pop(key)
        return sorted(ops, key=repr), [tuple(r) for r in moved], [tuple(r) for r in remaining]

    assert stored("W1") == stored("W2")
    assert db.card_info("W1").balances == db.card_info("W2").balances
    assert KKM_NAMES <= set().union(*_prepared_names(db.engine))


def test_a_terminated_connection_prepares_again_over_the_soap_server(soap, db):
    _pg(db)
    db.add_card_range(1, 1, "K", 0, None, issued=ISSUED)
    assert soap.service.RegisterOperation(Operation=op_dict("K1", accrued="20.00")).Status == APPLIED
    assert soap.service.GetCardInfo("K1").BonusBalance == D("20.00")
    admin = create_engine(db.settings.database_url, poolclass=NullPool)
    try:
        with admin.connect() as conn:  # every connection of the server's pool
            killed = conn.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
    finally:
        admin.dispose()
    assert killed >= 1
    for _ in range(3):
        assert soap.service.GetCardInfo("K1").BonusBalance == D("20.00")
    assert soap.service.RegisterOperation(Operation=op_dict("K1", spent="5.00")).Status == APPLIED
    assert soap.service.GetCardInfo("K1").BonusBalance == D("15.00")
    assert KKM_NAMES <= set().union(*_prepared_names(db.engine))


@pytest.mark.parametrize("reset", ["DISCARD ALL", "DEALLOCATE ALL"])
def test_a_session_reset_by_a_pooler_costs_the_register_nothing(db, reset, sent):
    _pg(db)
    db.add_card_range(1, 1, "R", 0, None, issued=ISSUED)
    db.register_operation(request("R1", accrued="20.00"))
    assert db.card_info("R1").number == "R1"
    assert KKM_NAMES <= set().union(*_prepared_names(db.engine))
    # GetCardInfo's read (autocommit) and a sale's lock + read (the transaction's first statement): the
    # EXECUTE fails, the statement is sent again with the PREPAREs
    for call in (lambda: db.card_info("R1"), lambda: db.register_operation(request("R1", spent="2.00"))):
        assert _reset_sessions(db.engine, reset) >= 1
        since = len(sent)
        assert call() is not None
        assert _prepared_again(sent, since)
    # a reserve begins with the lock + read, as a sale does: after a reset that statement is sent again with the
    # PREPAREs, and its entries-and-lots write goes with the COMMIT (adapters.pg_folded)
    assert _reset_sessions(db.engine, reset) >= 1
    hold = new_id()
    since = len(sent)
    HoldService(db).reserve(hold, "R1", "KKM-1", D("3.00"))
    assert _prepared_again(sent, since) and sent[-1].endswith("; COMMIT")
    # a cancel: its first statements are SQLAlchemy's, so its entries-and-lots write is sent in a savepoint,
    # rolled back to and sent again with the PREPAREs
    for n, cancel in enumerate((new_id(), new_id())):
        HoldService(db).reserve(cancel, "R1", "KKM-1", D("1.00"))
        if n == 0:
            assert _reset_sessions(db.engine, reset) >= 1
        since = len(sent)
        HoldService(db).cancel(cancel)
        if n == 0:
            assert _prepared_again(sent, since) and sent[-1].endswith("RELEASE SAVEPOINT kkm_prepared")
    # one round trip: guarded by the savepoint on the connection prepared above, or with the PREPAREs on
    # another of the pool's connections (the pool hands out its idle connections in turn)
    assert len(sent[since:]) == 1
    assert sent[-1].startswith(("SAVEPOINT kkm_prepared; ", "DEALLOCATE ALL; PREPARE"))
    assert _reset_sessions(db.engine, reset) >= 1
    assert _reset_sessions(db.engine, reset) >= 1
    since = len(sent)
    assert db.register_operation(request("R1", spent="3.00", op_id=hold)).status == APPLIED
    assert _prepared_again(sent, since)
    with UnitOfWork(db.engine, single_statement=True) as uow:  # a reset in the middle of a unit of work
        uow.repo.card_with_lots("R1")
        uow.conn.connection.dbapi_connection.cursor().execute(reset)  # autocommit: outside a transaction
        since = len(sent)
        card, card_lots = uow.repo.card_with_lots("R1")
    assert _prepared_again(sent, since)
    assert card["number"] == "R1"
    assert sum(lot.remaining for lot in card_lots if lot.measure.value == "bonus") == D("15.00")
    assert KKM_NAMES <= set().union(*_prepared_names(db.engine))


def test_a_sale_whose_transaction_began_elsewhere_goes_as_text_after_a_reset(db, sent):
    """A statement in a transaction that no EXECUTE vouched for is sent as text: after a reset it would
    fail there and lose the transaction."""
    _pg(db)
    db.add_card_range(1, 1, "T", 0, None, issued=ISSUED)
    db.register_operation(request("T1", accrued="20.00"))
    assert _reset_sessions(db.engine) >= 1
    since = len(sent)
    with UnitOfWork(db.engine, write=True) as uow:
        uow.conn.execute(text("SELECT 1"))  # the transaction is begun by another statement
        existing, card, card_lots = uow.repo.lock_card_for("T1", new_id())
        again = uow.repo.lock_card_for("T1", new_id())
    assert card["number"] == "T1" and again[1] == card
    assert [s.split(" ", 1)[0] for s in sent[since:]] == ["SELECT", "SELECT"]  # text
    with UnitOfWork(db.engine, write=True) as uow:  # a transaction begun by the EXECUTE: prepared again
        uow.repo.lock_card_for("T1", new_id())
        uow.repo.lock_card_for("T1", new_id())
    assert sent[since + 2].startswith("DEALLOCATE ALL; PREPARE") and sent[since + 3].startswith("EXECUTE kkm_lock")


def test_with_the_setting_off_no_statement_is_prepared(db, text_db):
    _pg(db)
    db.add_card_range(1, 1, "O", 0, None, issued=ISSUED)
    text_db.register_operation(request("O1", accrued="20.00"))
    assert text_db.card_info("O1").number == "O1"
    hold = new_id()
    HoldService(text_db).reserve(hold, "O1", "KKM-1", D("3.00"))
    assert text_db.register_operation(request("O1", spent="3.00", op_id=hold)).status == APPLIED
    names = _prepared_names(text_db.engine)
    assert names and set().union(*names) == set()


def test_the_setting():
    url = "sqlite:///x.sqlite3"
    assert Settings.from_env({"KKMTRANSFER_DATABASE_URL": url}).pg_prepared is True
    for raw, want in (("0", False), ("off", False), ("OFF ", False), ("1", True), ("on", True), ("", True)):
        assert Settings.from_env({"KKMTRANSFER_DATABASE_URL": url, "KKMTRANSFER_PG_PREPARED": raw}
                                 ).pg_prepared is want
    with pytest.raises(ConfigError, match="KKMTRANSFER_PG_PREPARED"):
        Settings.from_env({"KKMTRANSFER_DATABASE_URL": url, "KKMTRANSFER_PG_PREPARED": "maybe"})
