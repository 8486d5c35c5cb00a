"""Id squatting (issue 13 §1): a register may send any GUID, so it may send first every id the server
used to derive predictably. Each test takes the ids as the server computed them before (the published
namespaces, no secret), has a register use them for its own Sales, then runs the server's job: it must
work exactly as if those Sales had other ids. And `ledger verify` must catch entries of one operation booked
under another.
"""
from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from kkmtransfer.adapters.db import documents, entries, lots, operations
from kkmtransfer.adapters.server_ids import namespace, server_id
from kkmtransfer.service_layer.actions import Actions, Selection
from kkmtransfer.service_layer.billing_admin import BillingAdmin
from kkmtransfer.service_layer.journal import JournalImport
from kkmtransfer.service_layer.nightly import Nightly
from kkmtransfer.service_layer.reports import Reports

from .helpers import ISSUED, request
from .test_journal import T0, journal, line

MSK = ZoneInfo("Europe/Moscow")
# the namespaces the server derived its ids in before they were made secret (published in its source)
OLD_LINE_NS = uuid.UUID("6b1f3c1e-2f4a-4d7e-9a51-0c4d1e8a7f10")
OLD_OPENING_NS = uuid.UUID("a3d5c2f4-8e1b-4c6a-b7d9-2e4f6a8c0b13")
OLD_ACTION_NS = uuid.UUID("5e0b7f3a-91c4-4d2e-8a6b-3c7d9e1f2a40")
OLD_JOURNAL_NS = uuid.UUID("0d7c9c55-5b1e-4f7a-9f0e-2b8f3c1a6e42")


def msk(y, m, d, hh=12) -> datetime:
    return datetime(y, m, d, hh, tzinfo=MSK)


def op(db, op_id):
    with db.engine.connect() as conn:
        return conn.execute(select(operations).where(operations.c.id == op_id)).mappings().first()


def squat(db, card, op_id, when, **amounts):
    """A register's own Sale under ``op_id``."""
    req = request(card, op_id=op_id, time=when, **amounts)
    assert db.register_operation(req).status == "Applied"
    return req


def test_an_annulment_is_not_taken_by_a_sale_with_its_old_id(db):
    db.add_card_range(1, 2, "Q", 0, None, issued=ISSUED)
    db.clock.set(msk(2026, 11, 10))
    sale = squat(db, "Q1", str(uuid.uuid4()), msk(2026, 11, 10), accrued="10.00")
    trap = squat(db, "Q1", str(uuid.uuid5(uuid.UUID(sale.operation_id), "annulment")), msk(2026, 11, 10),
                 receipt_sum="1.00")
    result, taken = db.annul_receipt(sale.operation_id)
    assert (result.status, taken) == ("Applied", D("10.00"))
    assert result.operation_id != trap.operation_id
    assert db.card_info("Q1").balances.bonus == D("0.00")
    assert op(db, trap.operation_id)["kind"] == "Sale"
    again, taken = db.annul_receipt(sale.operation_id)              # once per sale, whatever its id
    assert (again.status, again.operation_id, taken) == ("AlreadyApplied", result.operation_id, D("10.00"))


def test_the_nightly_is_not_disturbed_by_sales_with_its_old_line_ids(db):
    db.add_card_range(1, 2, "N", 0, None, issued=ISSUED)
    db.add_promotion("SHORT", "short", lifetime_days=2)    # Nov 10: burns Nov 12
    db.add_promotion("LATE", "late", delay_days=3)         # Nov 10: starts Nov 13
    db.clock.set(msk(2026, 11, 10))
    db.register_operation(request("N1", accrued="10.00", time=msk(2026, 11, 10), promotion_code="SHORT"))
    db.register_operation(request("N2", accrued="8.00", time=msk(2026, 11, 10), promotion_code="LATE"))
    day = date(2026, 11, 13)
    traps = []
    for kind, card in (("WriteOff", "N1"), ("Accrual", "N2"), ("WriteOff", "N2"), ("Accrual", "N1")):
        old_doc = str(uuid.uuid5(OLD_LINE_NS, f"{kind}/{day.isoformat()}"))
        traps.append(squat(db, card, str(uuid.uuid5(OLD_LINE_NS, f"{old_doc}/{card}")), msk(2026, 11, 10),
                           receipt_sum="1.00", accrued="1.00"))
    db.clock.set(msk(2026, 11, 13, 2))
    [report] = Nightly(db).run(day)
    assert (report.write_off_lines, report.accrual_lines) == (1, 1)
    for trap in traps:  # the registers' sales keep what they were, and no nightly entry is theirs
        row = op(db, trap.operation_id)
        assert (row["kind"], row["bonus_accrued"], row["document_id"]) == ("Sale", D("1.00"), None)
    with db.engine.connect() as conn:
        lines = conn.execute(select(operations.c.card_number, operations.c.kind, operations.c.bonus_accrued)
                             .where(operations.c.source == "Nightly").order_by(operations.c.card_number)).all()
        expiry_owners = set(conn.execute(select(operations.c.kind).join(entries, entries.c.operation_id ==
                                                                          operations.c.id)
                                         .where(entries.c.role == "expiry")).scalars())
    assert [tuple(r) for r in lines] == [("N1", "Expiry", D("0.00")), ("N2", "Accrual", D("8.00"))]
    assert expiry_owners == {"Expiry"}
    assert db.card_info("N1").balances.bonus == D("2.00") and db.card_info("N2").balances.bonus == D("10.00")


def test_billing_enable_is_not_disturbed_by_sales_with_its_old_ids(db, tmp_path):
    db.add_card_range(1, 2, "E", 0, None, issued=ISSUED)
    db.clock.set(msk(2026, 11, 10))
    trap = squat(db, "E1", str(uuid.uuid5(OLD_OPENING_NS, "E1")), msk(2026, 11, 10), accrued="1.00")
    opening = tmp_path / "open.csv"
    opening.write_text("CardNumber;Bonus;Accumulation;ReceiptCount\nE1;100.00;500;3\nE2;7;0;0\n", encoding="utf-8")
    assert BillingAdmin(db).enable(date(2026, 11, 1), opening) == 2
    assert db.card_info("E1").balances.bonus == D("101.00") and db.card_info("E2").balances.bonus == D("7.00")
    assert op(db, trap.operation_id)["kind"] == "Sale"


def test_bonus_actions_are_not_disturbed_by_sales_with_their_old_ids(db):
    db.add_card_range(1, 3, "A", 0, None, issued=ISSUED)
    db.clock.set(msk(2026, 11, 10))
    what = dict(kind="credit", amount="5.00", until=None, note="gift", selection="range:A1..A3",
                day=date(2026, 11, 10).isoformat())
    old_action = uuid.uuid5(OLD_ACTION_NS, json.dumps(what, sort_keys=True, default=str))
    squat(db, "A1", str(old_action), msk(2026, 11, 10))
    for card in ("A1", "A2"):
        squat(db, card, str(uuid.uuid5(old_action, card)), msk(2026, 11, 10))
    report = Actions(db).credit("5.00", Selection(first="A1", last="A3"), note="gift")
    assert (report.cards, report.done, report.amount) == (3, 3, D("15.00"))
    assert [db.card_info(c).balances.bonus for c in ("A1", "A2", "A3")] == [D("5.00")] * 3
    cancel = Actions(db).cancel(report.action_id)     # its per-card cancel ids are derived the same way
    assert (cancel.cards, cancel.taken_back) == (3, D("15.00"))
    assert [db.card_info(c).balances.bonus for c in ("A1", "A2", "A3")] == [D("0.00")] * 3


def test_a_journal_row_without_id_is_not_taken_by_a_sale_with_its_old_id(db, tmp_path):
    db.add_card_range(1, 1, "J", 0, None, issued=ISSUED)
    db.clock.set(T0 + timedelta(days=1))
    old = uuid.uuid5(OLD_JOURNAL_NS, f"K1/77/{T0.astimezone(timezone.utc).isoformat()}")
    squat(db, "J1", str(old), T0, receipt_sum="1.00")
    summary = JournalImport(db).import_file(journal(tmp_path, "j.csv", line(number="77", accrued="9.00")))
    assert (summary.applied, summary.rejected) == (1, 0)
    assert db.card_info("J1").balances.bonus == D("9.00")
    again = JournalImport(db).import_file(journal(tmp_path, "j2.csv", line(number="77", accrued="9.00")))
    assert (again.applied, again.already) == (0, 1)


def test_server_ids_are_stable_per_installation_and_unknown_outside(db):
    with db.engine.begin() as conn:
        ns = namespace(conn)
        assert namespace(conn) == ns
    assert server_id(ns, "annulment", "x") == server_id(ns, "annulment", "x") != server_id(ns, "annulment", "y")
    assert ns not in (OLD_LINE_NS, OLD_OPENING_NS, OLD_ACTION_NS, OLD_JOURNAL_NS)


@pytest.mark.parametrize("parts", [("x",), ("K1", "42", "2026-11-01T06:00:00+00:00"), ("Касса №1", 7, None), ()])
def test_a_server_id_is_uuid5_of_its_namespace(parts):
    """Ids stored before stay the same: server_id is uuid5(namespace, purpose/parts) however it is made."""
    ns = uuid.uuid4()
    assert server_id(ns, "journal", *parts) == str(uuid.uuid5(ns, "/".join(["journal", *(str(p) for p in parts)])))


def test_a_server_id_held_by_a_foreign_row_fails_in_one_line(db):
    db.add_card_range(1, 1, "F", 0, None, issued=ISSUED)
    db.clock.set(msk(2026, 11, 10))
    sale = squat(db, "F1", str(uuid.uuid4()), msk(2026, 11, 10), accrued="3.00")
    with db.engine.begin() as conn:  # as if a register had guessed the secret id
        annul_id = server_id(namespace(conn), "annulment", sale.operation_id)
    squat(db, "F1", annul_id, msk(2026, 11, 10))
    from kkmtransfer.adapters.server_ids import IdTaken

    with pytest.raises(IdTaken) as caught:
        db.annul_receipt(sale.operation_id)
    assert "\n" not in str(caught.value) and annul_id in str(caught.value)
    assert db.card_info("F1").balances.bonus == D("3.00")


# -- ledger verify: entries of one operation booked under another ---------------------------------------------
@pytest.fixture
def nightly_done(db):
    db.add_card_range(1, 2, "V", 0, None, issued=ISSUED)
    db.add_promotion("SHORT", "short", lifetime_days=2)
    db.clock.set(msk(2026, 11, 10))
    sale = db.register_operation(request("V1", accrued="10.00", time=msk(2026, 11, 10), promotion_code="SHORT"))
    other = db.register_operation(request("V2", accrued="4.00", time=msk(2026, 11, 10)))
    db.clock.set(msk(2026, 11, 13, 2))
    Nightly(db).run(date(2026, 11, 13))
    assert Reports(db).verify() == []
    return db, sale.operation_id, other.operation_id


def _expiry_line(conn):
    return conn.execute(select(operations.c.id).where(operations.c.kind == "Expiry")).scalar_one()


def test_verify_catches_an_entry_of_another_card(nightly_done):
    db, sale_id, other_id = nightly_done
    with db.engine.begin() as conn:
        entry = conn.execute(select(entries.c.id).where(entries.c.operation_id == other_id)).scalars().first()
        conn.execute(update(entries).where(entries.c.id == entry).values(operation_id=sale_id))
    try:
        problems = Reports(db).verify()
        assert any(f"entry {entry} of card V2 is booked under operation {sale_id}" in p for p in problems), problems
    finally:
        with db.engine.begin() as conn:
            conn.execute(update(entries).where(entries.c.id == entry).values(operation_id=other_id))


def test_verify_catches_a_burn_booked_under_a_sale(nightly_done):
    db, sale_id, _ = nightly_done
    with db.engine.begin() as conn:  # what the nightly did when a register held its line's id
        line_id = _expiry_line(conn)
        burns = conn.execute(select(entries.c.id).where(entries.c.operation_id == line_id)).scalars().all()
        conn.execute(update(entries).where(entries.c.id.in_(burns)).values(operation_id=sale_id))
    try:
        problems = Reports(db).verify()
        assert any(f"under operation {sale_id} (Sale), which is not an expiry line" in p for p in problems), problems
    finally:
        with db.engine.begin() as conn:
            conn.execute(update(entries).where(entries.c.id.in_(burns)).values(operation_id=line_id))


def test_verify_catches_a_document_line_of_the_wrong_kind(nightly_done):
    db, sale_id, _ = nightly_done
    with db.engine.begin() as conn:
        doc = conn.execute(select(documents.c.id).where(documents.c.kind == "WriteOff")).scalar_one()
        conn.execute(update(operations).where(operations.c.id == sale_id).values(document_id=doc))
    try:
        problems = Reports(db).verify()
        assert any(f"operation {sale_id} (Sale) is a line of the WriteOff document" in p for p in problems), problems
    finally:
        with db.engine.begin() as conn:
            conn.execute(update(operations).where(operations.c.id == sale_id).values(document_id=None))


@pytest.mark.parametrize("kind", ["WriteOff", "Accrual"])
def test_a_nightly_line_id_held_by_a_foreign_row_stops_the_batch_in_one_line(db, kind):
    """As if a register had guessed the secret: the batch writes nothing and says so in one line."""
    from kkmtransfer.adapters import regulation
    from kkmtransfer.adapters.server_ids import IdTaken

    db.add_card_range(1, 1, "G", 0, None)
    db.add_promotion("SHORT", "short", lifetime_days=2)    # Nov 10: burns Nov 12
    db.add_promotion("LATE", "late", delay_days=3)         # Nov 10: starts Nov 13
    db.clock.set(msk(2026, 11, 10))
    db.register_operation(request("G1", accrued="10.00", time=msk(2026, 11, 10), promotion_code="SHORT"))
    db.register_operation(request("G1", accrued="8.00", time=msk(2026, 11, 10), promotion_code="LATE"))
    day = date(2026, 11, 13)
    with db.engine.begin() as conn:
        line = regulation.line_id(regulation.document_id(conn, kind, day), "G1")
    squat(db, "G1", line, msk(2026, 11, 10), receipt_sum="1.00")
    db.clock.set(msk(2026, 11, 13, 2))
    with pytest.raises(IdTaken) as caught:
        Nightly(db).run(day)
    assert "\n" not in str(caught.value)
    row = op(db, line)
    assert (row["kind"], row["bonus_accrued"], row["document_id"]) == ("Sale", D("0.00"), None)
    with db.engine.connect() as conn:
        assert conn.execute(select(entries.c.lot_id).where(entries.c.operation_id == line,
                                                           entries.c.role == "expiry")).first() is None


def test_an_action_operation_id_held_by_a_foreign_row_stops_the_batch_in_one_line(db):
    from kkmtransfer.adapters.server_ids import IdTaken, engine_namespace
    from kkmtransfer.service_layer.actions import Actions, Selection

    db.add_card_range(1, 3, "H", 0, None)
    db.clock.set(msk(2026, 11, 10))
    action_id = server_id(engine_namespace(db.engine), "action", json.dumps(
        dict(kind="credit", amount="5.00", until=None, note="trap", selection="all-active"), sort_keys=True))
    squat(db, "H2", Actions._op_id(action_id, "H2"), msk(2026, 11, 10), receipt_sum="1.00")
    with pytest.raises(IdTaken) as caught:
        Actions(db).credit("5.00", Selection(all_active=True), note="trap")
    assert "\n" not in str(caught.value)
    assert [db.card_info(c).balances.bonus for c in ("H1", "H2", "H3")] == [D("0.00")] * 3
