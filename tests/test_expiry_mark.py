"""The write-off takes each expired lot once and marks it (``lots.expiry_document_id``, migration 0013).

The rule (docs/operations.md §7, ``CardLedger._burn_if_expired``): what lands in a lot whose end has passed
burns at once, in the operation that put it there; so once the WriteOff has burnt a lot, nothing is ever left
in it to burn again, and the write-off of later nights must not take it again. An expired lot that holds
nothing is taken once as well: marked, without an entry or a line.
"""
from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import bindparam, func, insert, select, text, update

from kkmtransfer.adapters import regulation
from kkmtransfer.adapters.db import documents, entries, lots, make_engine, operations
from kkmtransfer.adapters.migrate import upgrade
from kkmtransfer.config import Settings
from kkmtransfer.domain.model import Kind, Role
from kkmtransfer.service_layer.nightly import Nightly
from kkmtransfer.service_layer.reports import Reports
from kkmtransfer.service_layer.services import BillingService

from .conftest import PG_URL, Clock
from .helpers import ISSUED, assert_invariants, request

MSK = ZoneInfo("Europe/Moscow")


def msk(y, m, d, hh=12, mm=0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=MSK)


def lot_rows(billing):
    with billing.engine.connect() as conn:
        return {(r.card_number, r.id): r for r in conn.execute(
            select(lots.c.id, lots.c.card_number, lots.c.remaining, lots.c.expires_at,
                   lots.c.expiry_document_id).where(lots.c.expires_at.is_not(None)))}


def nightly_burns(billing) -> list[tuple[int, D]]:
    """(lot, amount) of every expiry entry under a nightly Expiry line."""
    with billing.engine.connect() as conn:
        return sorted(conn.execute(
            select(entries.c.lot_id, entries.c.amount).join(operations, operations.c.id == entries.c.operation_id)
            .where(entries.c.role == Role.EXPIRY.value, operations.c.document_id.is_not(None))).all())


def write_off_id(billing, day: date) -> str:
    with billing.engine.connect() as conn:
        return conn.execute(select(documents.c.id).where(documents.c.kind == regulation.WRITE_OFF,
                                                         documents.c.business_date == day)).scalar_one()


def _expiring_cards(billing):
    """N1: 10.00 that burns Nov 12 (00:00), 4.00 of it spent; N2: 5.00 that burns Nov 12, all spent before.
    Answers the two spending sales."""
    billing.add_card_range(1, 2, "N", 0, None, issued=ISSUED)
    billing.add_promotion("SHORT", "short", lifetime_days=2)    # Nov 10 receipt: usable Nov 10-11
    billing.clock.set(msk(2026, 11, 10))
    billing.register_operation(request("N1", accrued="10.00", time=msk(2026, 11, 10), promotion_code="SHORT"))
    billing.register_operation(request("N2", accrued="5.00", time=msk(2026, 11, 10), promotion_code="SHORT"))
    spends = {c: request(c, spent=s, time=msk(2026, 11, 10, 13)) for c, s in (("N1", "4.00"), ("N2", "5.00"))}
    for r in spends.values():
        billing.register_operation(r)
    return spends


def test_an_expired_lot_is_taken_once_and_a_later_refund_into_it_burns_in_its_own_operation(db):
    spends = _expiring_cards(db)
    db.clock.set(msk(2026, 11, 13, 2, 0))
    [night] = Nightly(db).run(date(2026, 11, 13))
    # N1's lot burns 6.00 on its card's line; N2's emptied lot is taken and marked, without entry or line
    assert (night.expired_lots, night.write_off_lines) == (1, 1)
    doc = write_off_id(db, date(2026, 11, 13))
    marked = lot_rows(db)
    assert {k[0]: (r.remaining, r.expiry_document_id) for k, r in marked.items()} == {
        "N1": (D("0.00"), doc), "N2": (D("0.00"), doc)}
    burns = nightly_burns(db)
    [(n1_lot, n1_amount)] = burns
    assert marked[("N1", n1_lot)] and n1_amount == D("-6.00")

    # a correction afterwards: the spends are returned; the bonuses go back to the lots they came from, which
    # have burnt, so they burn at once in the returns' own operations (docs/integration.md: "ones that burnt
    # meanwhile do not come back to life")
    db.clock.set(msk(2026, 11, 13, 10, 0))
    for card, sale in spends.items():
        db.register_operation(request(card, kind="Return", spent=str(sale.bonus_spent), time=msk(2026, 11, 13, 10),
                                      original_operation_id=sale.operation_id))
    assert {k[0]: r.remaining for k, r in lot_rows(db).items()} == {"N1": D("0.00"), "N2": D("0.00")}

    # later nights take neither lot again: no line, no entry, the marks stay those of the first night
    for day in (date(2026, 11, 14), date(2026, 11, 20)):
        db.clock.set(datetime.combine(day, datetime.min.time(), MSK).replace(hour=2))
        for report in Nightly(db).run(day):
            assert (report.expired_lots, report.write_off_lines) == (0, 0)
    assert nightly_burns(db) == burns
    assert {k: r.expiry_document_id for k, r in lot_rows(db).items()} == {k: doc for k in marked}
    assert Reports(db).verify() == []


def test_a_lot_taken_once_is_never_taken_again_whatever_it_holds_later(db):
    """The mark is the rule the write-off reads: should a taken lot ever hold something again (nothing in
    the product does that: it burns at once), the write-off of a later night does not take it again."""
    _expiring_cards(db)
    db.clock.set(msk(2026, 11, 13, 2, 0))
    Nightly(db).run(date(2026, 11, 13))
    [n2_lot] = [lot_id for card, lot_id in lot_rows(db) if card == "N2"]
    burns = nightly_burns(db)
    with db.engine.begin() as conn:  # N2's lot expired empty and was taken: put 3.00 in it by hand
        conn.execute(update(lots).where(lots.c.id == n2_lot).values(remaining=D("3.00")))
    try:
        db.clock.set(msk(2026, 11, 14, 2, 0))
        [report] = Nightly(db).run(date(2026, 11, 14))
        assert (report.expired_lots, report.write_off_lines) == (0, 0) and nightly_burns(db) == burns
    finally:  # the ledger as the invariants expect it
        with db.engine.begin() as conn:
            conn.execute(update(lots).where(lots.c.id == n2_lot).values(remaining=D("0.00")))


# -- an upgraded database: nights written before 0013 are not burnt again ------------------------------------
def _old_expire_batch(conn, doc_id, day, cutoff, now, limit, postgres, **_):
    """The write-off as it was before 0013 (the generic path): the lots still holding something, emptied."""
    batch = conn.execute(select(lots.c.id, lots.c.card_number, lots.c.measure, lots.c.remaining)
                         .where(lots.c.remaining > 0, lots.c.expires_at <= cutoff)
                         .order_by(lots.c.expires_at, lots.c.id).limit(limit)).all()
    if not batch:
        return 0, 0
    regulation._insert_missing_lines(conn, regulation._line_rows(
        doc_id, Kind.EXPIRY, sorted({r.card_number for r in batch}), day, cutoff, now))
    conn.execute(insert(entries), [
        dict(operation_id=regulation.line_id(doc_id, r.card_number), lot_id=r.id, card_number=r.card_number,
             measure=r.measure, role=Role.EXPIRY.value, amount=-r.remaining) for r in batch])
    conn.execute(update(lots).where(lots.c.id.in_(bindparam("ids", expanding=True))).values(remaining=0),
                 {"ids": [r.id for r in batch]})
    return len(batch), len(batch)  # (lots taken, lots burnt), the step's answer


def _old_due_count(conn, cutoff):
    return conn.execute(select(func.count()).select_from(lots)
                        .where(lots.c.remaining > 0, lots.c.expires_at <= cutoff)).scalar_one()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'upgraded.sqlite3'}"
        return
    admin = request.getfixturevalue("pg_admin")
    name = f"kkmtest_up_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n "
                          "AND pid <> pg_backend_pid()"), {"n": name})
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))


def test_an_upgraded_database_does_not_burn_again_what_an_earlier_night_burnt(fresh_url, monkeypatch):
    upgrade(fresh_url, "0012")
    engine = make_engine(fresh_url)
    try:
        billing = BillingService(engine, Settings(database_url=fresh_url, auth_cache_ttl=0), Clock())
        _expiring_cards(billing)
        # the night of Nov 13 written by the code before 0013 (the lots' table has no mark yet)
        with monkeypatch.context() as m:
            m.setattr(regulation, "expire_batch", _old_expire_batch)
            m.setattr(regulation, "due_expiry_count", _old_due_count)
            billing.clock.set(msk(2026, 11, 13, 2, 0))
            [old] = Nightly(billing).run(date(2026, 11, 13))
        assert (old.expired_lots, old.write_off_lines) == (1, 1)
        burns = nightly_burns(billing)
        assert [a for _, a in burns] == [D("-6.00")]

        upgrade(fresh_url)  # 0013: N1's burnt lot gets the mark of the document that burnt it
        doc = write_off_id(billing, date(2026, 11, 13))
        assert {k[0]: r.expiry_document_id for k, r in lot_rows(billing).items()} == {"N1": doc, "N2": None}
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                assert "fillfactor=70" in conn.execute(text(
                    "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname = 'lots'")).scalar()

        billing.clock.set(msk(2026, 11, 14, 2, 0))
        [night] = Nightly(billing).run(date(2026, 11, 14))
        # nothing burns again; N2's lot, which expired empty, is taken now, once, without a line
        assert (night.expired_lots, night.write_off_lines) == (0, 0)
        assert nightly_burns(billing) == burns
        later = write_off_id(billing, date(2026, 11, 14))
        assert {k[0]: r.expiry_document_id for k, r in lot_rows(billing).items()} == {"N1": doc, "N2": later}
        assert_invariants(billing)
    finally:
        engine.dispose()


def test_the_mark_migration_goes_down_and_up_again(fresh_url):
    upgrade(fresh_url)
    from alembic import command

    from kkmtransfer.adapters.migrate import alembic_config
    command.downgrade(alembic_config(fresh_url), "0012")
    engine = make_engine(fresh_url)
    try:
        with engine.connect() as conn:
            names = {r[0] for r in conn.execute(text(
                "SELECT name FROM pragma_table_info('lots')" if engine.dialect.name == "sqlite" else
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'lots'"))}
        assert "expiry_document_id" not in names
    finally:
        engine.dispose()
    upgrade(fresh_url)
