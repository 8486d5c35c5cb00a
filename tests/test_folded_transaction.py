"""RegisterOperation's transaction in two round trips (``adapters.pg_folded``, docs/performance.md §5.8): the BEGIN
sent with the card's lock and read, the COMMIT with the operation's write. What must hold: exactly two
statements reach the server for a sale and psycopg2 sends no transaction control of its own; whatever fails
between the BEGIN and the COMMIT leaves nothing written and hands the pool an idle connection; a duplicate id
found at the COMMIT is still answered once (the retry reads it); SQLAlchemy's statements in between run
inside the transaction, in order."""
from __future__ import annotations

from decimal import Decimal as D

import psycopg2.extensions
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from kkmtransfer.adapters.db import entries, make_engine, operations
from kkmtransfer.domain import errors
from kkmtransfer.service_layer.services import ALREADY_APPLIED, APPLIED, BillingService
from kkmtransfer.service_layer.unit_of_work import UnitOfWork

from .helpers import ISSUED, new_id, request

_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


class _Recording(psycopg2.extensions.cursor):
    """Every query string a cursor of the engine sent (psycopg2's own BEGIN/COMMIT never pass here)."""

    sent: list[str] = []

    def execute(self, query, vars=None):
        _Recording.sent.append(query)
        return super().execute(query, vars)


@pytest.fixture
def folded(db):
    """A BillingService on an engine whose cursors record what they send, over the test's ledger."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("folding BEGIN and COMMIT into the statements is PostgreSQL's raw path")
    engine = make_engine(db.settings.database_url, connect_args={"cursor_factory": _Recording})
    _Recording.sent = []
    yield BillingService(engine, db.settings, db.clock)
    engine.dispose()


def _pooled_connections_are_idle(engine) -> None:
    """Every connection the pool holds: no server transaction open, psycopg2 not in autocommit."""
    pool = engine.pool
    fairies = [pool.connect() for _ in range(pool.checkedin())]
    try:
        for fairy in fairies:
            dbapi = fairy.dbapi_connection
            assert dbapi.get_transaction_status() == _IDLE
            assert dbapi.autocommit is False
    finally:
        for fairy in fairies:
            fairy.close()


def _count(engine, table, **where) -> int:
    with engine.connect() as conn:
        stmt = select(func.count()).select_from(table)
        for name, value in where.items():
            stmt = stmt.where(table.c[name] == value)
        return conn.execute(stmt).scalar()


def test_a_sale_is_two_round_trips_begin_with_the_lock_and_commit_with_the_write(folded):
    folded.add_card_range(1, 1, "F", 0, None, issued=ISSUED)
    folded.register_operation(request("F1", accrued="30.00"))  # every connection prepared, bonus to spend
    since = len(_Recording.sent)
    op_id = new_id()
    result = folded.register_operation(request("F1", accrued="2.00", spent="5.00", op_id=op_id), actor=None)
    assert result.status == APPLIED and result.card.balances.bonus == D("27.00")
    sent = _Recording.sent[since:]
    assert len(sent) == 2, sent
    assert sent[0].startswith("BEGIN; ") and "EXECUTE kkm_lock " in sent[0]
    assert "EXECUTE kkm_sale " in sent[1] and sent[1].endswith("; COMMIT")
    # committed: another connection sees it, with its entries
    assert _count(folded.engine, operations, id=op_id) == 1
    assert _count(folded.engine, entries, operation_id=op_id) >= 3
    _pooled_connections_are_idle(folded.engine)


def test_a_refusal_after_the_lock_writes_nothing_and_pools_an_idle_connection(folded):
    folded.add_card_range(1, 1, "F", 0, None, issued=ISSUED)
    folded.register_operation(request("F1", accrued="3.00"))
    op_id = new_id()
    with pytest.raises(errors.InsufficientBonus):
        folded.register_operation(request("F1", spent="50.00", op_id=op_id))
    assert _Recording.sent[-1] == "ROLLBACK"
    assert _count(folded.engine, operations, id=op_id) == 0
    _pooled_connections_are_idle(folded.engine)
    assert folded.register_operation(request("F1", spent="1.00")).status == APPLIED


def test_a_duplicate_id_found_at_the_commit_is_answered_by_the_retry(folded, monkeypatch):
    """Another writer commits the same OperationId (under another card, so the card's lock does not order
    them) after this sale read that the id is new: the kept write fails at the COMMIT's round trip; nothing of
    it is written, and the retry answers from what the other writer stored."""
    folded.add_card_range(1, 2, "F", 0, None, issued=ISSUED)
    for card in ("F1", "F2"):  # lots to write into: the sale's write is the one kept for the commit
        folded.register_operation(request(card, accrued="1.00"))
    op_id = new_id()
    same = request("F1", accrued="4.00", op_id=op_id)
    original = BillingService._view
    raced = []

    def view_then_race(self, repo, card, now, ledger=None):
        if not raced:  # between the lock and the commit: the write is kept, not sent
            raced.append(True)
            folded_other = BillingService(folded.engine, folded.settings, folded.clock)
            assert folded_other.register_operation(same).status == APPLIED  # the same contents, card F1
        return original(self, repo, card, now, ledger)

    monkeypatch.setattr(BillingService, "_view", view_then_race)
    # the other writer waits for F1's lock: race on F2's card with the same id instead
    race = request("F2", accrued="4.00", op_id=op_id)
    with pytest.raises(errors.OperationConflict):  # the retry finds the id applied to F1 with other contents
        folded.register_operation(race)
    assert raced and _count(folded.engine, operations, id=op_id) == 1
    assert _count(folded.engine, operations, card_number="F2") == 1  # its first sale only
    assert _count(folded.engine, entries, operation_id=op_id, card_number="F2") == 0
    _pooled_connections_are_idle(folded.engine)
    monkeypatch.setattr(BillingService, "_view", original)
    assert folded.register_operation(same).status == ALREADY_APPLIED


def test_a_connection_killed_between_the_lock_and_the_commit_loses_the_sale_whole(folded, monkeypatch):
    folded.add_card_range(1, 1, "F", 0, None, issued=ISSUED)
    folded.register_operation(request("F1", accrued="10.00"))
    original = BillingService._view
    killed = []

    def view_then_kill(self, repo, card, now, ledger=None):
        if not killed:
            pid = repo._dbapi.get_backend_pid()
            with folded.engine.connect() as other:
                killed.append(other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar())
        return original(self, repo, card, now, ledger)

    monkeypatch.setattr(BillingService, "_view", view_then_kill)
    op_id = new_id()
    with pytest.raises(OperationalError):
        folded.register_operation(request("F1", accrued="1.00", spent="2.00", op_id=op_id))
    assert killed == [True]
    monkeypatch.setattr(BillingService, "_view", original)
    assert _count(folded.engine, operations, id=op_id) == 0
    _pooled_connections_are_idle(folded.engine)
    assert folded.card_info("F1").balances.bonus == D("10.00")
    assert folded.register_operation(request("F1", spent="2.00")).status == APPLIED
    assert folded.card_info("F1").balances.bonus == D("8.00")


def test_statements_of_sqlalchemys_between_run_inside_the_transaction_in_order(folded):
    """A unit of work whose first statement is SQLAlchemy's gets the BEGIN alone first; a write kept for the
    commit is sent before any later statement; leaving without commit rolls all of it back."""
    folded.add_card_range(1, 1, "F", 0, None, issued=ISSUED)
    folded.register_operation(request("F1", accrued="1.00"))  # lots: the write below is kept
    with UnitOfWork(folded.engine, write=True, fold=True) as uow:
        since = len(_Recording.sent)
        assert uow.repo.get_user("nobody") is None  # SQLAlchemy's statement: the BEGIN goes first, alone
        assert _Recording.sent[since] == "BEGIN"
        existing, card, lots = uow.repo.lock_card_for("F1", new_id())
        assert card["number"] == "F1" and not _Recording.sent[-1].startswith("BEGIN")
        kept = len(_Recording.sent)
        uow.repo.insert_operation_with_moves(*_a_sale_of(folded, card, lots))
        assert len(_Recording.sent) == kept  # kept for the commit
        assert uow.conn.execute(select(func.count()).select_from(operations)).scalar() == 2  # sent first
        assert len(_Recording.sent) == kept + 2 and "EXECUTE kkm_sale " in _Recording.sent[kept]
        # not committed: nobody else sees it
        assert _count(folded.engine, operations) == 1
    assert _Recording.sent[-1] == "ROLLBACK"
    assert _count(folded.engine, operations) == 1
    _pooled_connections_are_idle(folded.engine)


def test_a_unit_of_work_without_the_lock_commits_with_a_commit_of_its_own(folded):
    folded.add_card_range(1, 1, "F", 0, None, issued=ISSUED)
    with UnitOfWork(folded.engine, write=True, fold=True) as uow:
        uow.repo.update_card("F1", holder="Folded")
        uow.commit()
    assert _Recording.sent[-2:] == ["BEGIN", "COMMIT"] or _Recording.sent[-1] == "COMMIT"
    assert folded.card_info("F1").holder == "Folded"
    _pooled_connections_are_idle(folded.engine)


def _a_sale_of(billing, card, lots):
    """(values, moves, now) of a plain sale accruing 1.00 on the card: what ``apply`` would write."""
    from kkmtransfer.domain.ledger import CardLedger
    from kkmtransfer.domain.model import Measure

    now = billing.clock()
    ledger = CardLedger(lots, now)
    ledger.credit(Measure.BONUS, D("1.00"), None, None)
    values = dict(id=new_id(), card_number=card["number"], kind="Sale", source="Online", kkm="KKM-1", store=None,
                  receipt_number=None, operation_time=now, business_date=now.date(), content_hash="x" * 64,
                  receipt_sum=D("10.00"), bonus_accrued=D("1.00"), bonus_spent=D("0.00"),
                  accumulation_delta=D("0.00"), receipt_count_delta=0, promotion_code=None,
                  original_operation_id=None, created_at=now)
    return values, ledger.moves, now


def test_a_reserve_of_a_known_login_sends_no_users_or_secret_read(folded):
    """ReserveBonus with the request's authenticated principal and the installation's namespace kept from an
    earlier reserve: the card's lock and read (with BEGIN), the hold's look-up, its ledger id's look-up and the
    writes; neither the users row nor the server secret is read again."""
    from kkmtransfer.service_layer.credentials import Principal
    from kkmtransfer.service_layer.holds import HoldService

    folded.add_card_range(1, 1, "F", 0, None, issued=ISSUED)
    folded.add_user("kassa-f", "a-password-1", kkms=["KKM-1"])
    folded.register_operation(request("F1", accrued="30.00"))
    holds = HoldService(folded)
    who = Principal("kassa-f", ("KKM-1",))
    holds.reserve(new_id(), "F1", "KKM-1", D("1.00"), actor="kassa-f", principal=who)  # keeps the namespace
    assert folded.id_namespace is not None
    since = len(_Recording.sent)
    view = holds.reserve(new_id(), "F1", "KKM-1", D("2.00"), actor="kassa-f", principal=who)
    assert view.status == "Reserved" and view.card.balances.bonus == D("27.00")
    sent = _Recording.sent[since:]
    assert sent[0].startswith("BEGIN; ") and sent[-1].endswith("; COMMIT"), sent
    assert not [s for s in sent if "users" in s.lower() or "server_secret" in s.lower()], sent
    assert len(sent) == 5, sent  # lock and read; the ledger id's operation; operation, hold; moves + COMMIT
    with pytest.raises(errors.ValidationError, match="KKM-1"):
        holds.reserve(new_id(), "F1", "KKM-2", D("1.00"), actor="kassa-f", principal=who)
    _pooled_connections_are_idle(folded.engine)
