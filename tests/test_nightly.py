"""The nightly regulation: documents, idempotence, catch-up, crash and re-run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, insert, select

from kkmtransfer.adapters.db import documents, entries, lots, operations
from kkmtransfer.domain import errors
from kkmtransfer.service_layer.nightly import Nightly

from .helpers import ISSUED, request

MSK = ZoneInfo("Europe/Moscow")
KKM = str(Path(sys.executable).parent / "kkmtransfer")


def msk(y, m, d, hh=12, mm=0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=MSK)


def rows(db, table, *where):
    with db.engine.connect() as conn:
        return conn.execute(select(table).where(*where)).mappings().all()


def count(db, table, *where) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def history_total(db, card: str, field: str):
    return sum((getattr(h, field) for h in db.card_operations(card, date(2000, 1, 1), date(2100, 1, 1))),
               D("0.00") if field != "receipt_count" else 0)


@pytest.fixture
def setup(db):
    db.add_card_range(1, 3, "N", 0, None, issued=ISSUED)
    db.add_promotion("SHORT", "short", lifetime_days=2)    # Nov 10 receipt: usable Nov 10-11, burns Nov 12
    db.add_promotion("LATE", "late", delay_days=3)         # Nov 10 receipt: starts Nov 13
    db.clock.set(msk(2026, 11, 10))
    db.register_operation(request("N1", accrued="10.00", time=msk(2026, 11, 10), promotion_code="SHORT"))
    db.register_operation(request("N1", accrued="4.00", time=msk(2026, 11, 10)))
    db.register_operation(request("N2", accrued="6.00", time=msk(2026, 11, 10), promotion_code="SHORT"))
    db.register_operation(request("N2", spent="1.00", time=msk(2026, 11, 10, 13)))
    db.register_operation(request("N3", receipt_sum="300.00", accrued="8.00", spent="0.00",
                                  time=msk(2026, 11, 10), promotion_code="LATE"))
    return db


def test_a_date_writes_one_write_off_and_one_accrual_document(setup):
    db = setup
    db.clock.set(msk(2026, 11, 13, 2, 0))
    before = {c: db.card_info(c).balances for c in ("N1", "N2", "N3")}
    [report] = Nightly(db).run(date(2026, 11, 13))
    assert (report.write_off_lines, report.accrual_lines) == (2, 1)

    docs = {d["kind"]: d for d in rows(db, documents)}
    assert set(docs) == {"WriteOff", "Accrual"} and all(d["status"] == "done" for d in docs.values())
    lines = rows(db, operations, operations.c.source == "Nightly")
    assert sorted((l["card_number"], l["kind"]) for l in lines) == [
        ("N1", "Expiry"), ("N2", "Expiry"), ("N3", "Accrual")]
    # the books changed, the balances did not: they were already right
    assert {c: db.card_info(c).balances for c in before} == before

    # the first run ever does only its own date: its document holds all that burnt by the start of it
    [expiry_n2] = [h for h in db.card_operations("N2", date(2026, 11, 13), date(2026, 11, 13))]
    assert (expiry_n2.kind, expiry_n2.source, expiry_n2.bonus) == ("Expiry", "Nightly", D("-5.00"))
    assert expiry_n2.time == msk(2026, 11, 13, 0, 0)
    hist_n3 = db.card_operations("N3", date(2026, 11, 1), date(2026, 11, 30))
    assert [(h.kind, h.bonus) for h in hist_n3] == [("Sale", D("0.00")), ("Accrual", D("8.00"))]
    for card in ("N1", "N2", "N3"):  # the books add up to the balance
        assert history_total(db, card, "bonus") == db.card_info(card).balances.bonus


def test_running_a_date_again_adds_nothing(setup):
    db = setup
    db.clock.set(msk(2026, 11, 13, 2, 0))
    Nightly(db).run(date(2026, 11, 13))
    snapshot = (count(db, operations), count(db, entries), count(db, documents))
    [again] = Nightly(db).run(date(2026, 11, 13))
    assert again.skipped and (count(db, operations), count(db, entries), count(db, documents)) == snapshot
    assert Nightly(db).run() == [again.__class__(date(2026, 11, 13), write_off_lines=2, accrual_lines=1,
                                                 skipped=True)]


def test_missed_dates_are_caught_up_oldest_first(setup):
    db = setup
    db.clock.set(msk(2026, 11, 9, 2, 0))
    Nightly(db).run(date(2026, 11, 9))            # the last night that ran
    db.clock.set(msk(2026, 11, 15, 2, 0))
    reports = Nightly(db).run()                   # the worker was down for five nights
    assert [r.day for r in reports] == [date(2026, 11, d) for d in range(10, 16)]
    by_day = {r.day: r for r in reports}
    assert by_day[date(2026, 11, 12)].write_off_lines == 2 and by_day[date(2026, 11, 13)].accrual_lines == 1
    assert sum(r.write_off_lines + r.accrual_lines for r in reports) == 3
    assert count(db, documents) == 14 and count(db, documents, documents.c.status == "done") == 14


def test_a_future_date_is_refused(setup):
    db = setup
    db.clock.set(msk(2026, 11, 13))
    with pytest.raises(errors.ValidationError, match="future"):
        Nightly(db).run(date(2026, 11, 14))


def test_one_run_at_a_time_works_on_a_document(setup):
    db = setup
    db.clock.set(msk(2026, 11, 13, 2, 0))
    first = Nightly(db)
    with db.engine.begin() as conn:  # another run holds a fresh lease on the write-off
        from kkmtransfer.adapters import regulation as sql
        doc = sql.ensure_document(conn, sql.WRITE_OFF, date(2026, 11, 13), db.clock())
        assert sql.claim(conn, doc["id"], "other", db.clock(),
                         db.clock() + timedelta(minutes=10))
    with pytest.raises(errors.DomainError, match="being written"):
        first.run(date(2026, 11, 13))
    db.clock.set(msk(2026, 11, 13, 2, 11))        # the other run's lease ran out: take over
    [report] = first.run(date(2026, 11, 13))
    assert report.write_off_lines == 2


def seed_expiring(db, cards: int, per_card: int, expires_at: datetime) -> int:
    """Many expiring lots, fast: cards, one Sale each, and per lot one credit entry (set up in bulk)."""
    from tests.helpers import new_id

    now = datetime.now(timezone.utc)
    numbers = [f"K{i:06d}" for i in range(cards)]
    db.add_card_range(0, cards - 1, "K", 6, None, issued=ISSUED)
    ops = [dict(id=new_id(), card_number=n, kind="Sale", source="Offline", kkm="K", operation_time=now,
                business_date=now.date(), content_hash="x", receipt_sum=D("0.00"), bonus_accrued=D("1.00") * per_card,
                bonus_spent=D("0.00"), accumulation_delta=D("0.00"), receipt_count_delta=0, created_at=now)
           for n in numbers]
    with db.engine.begin() as conn:
        conn.execute(insert(operations), ops)
        conn.execute(insert(lots), [dict(card_number=n, measure="bonus", remaining=D("1.00"), available_from=None,
                                         expires_at=expires_at + timedelta(minutes=k), created_at=now)
                                    for n in numbers for k in range(per_card)])
        lot_ids = conn.execute(select(lots.c.id, lots.c.card_number).order_by(lots.c.id)).all()
        op_of = {o["card_number"]: o["id"] for o in ops}
        conn.execute(insert(entries), [dict(operation_id=op_of[c], lot_id=i, card_number=c, measure="bonus",
                                            role="credit", amount=D("1.00")) for i, c in lot_ids])
    return cards * per_card


@pytest.mark.slow
def test_a_run_killed_mid_way_is_completed_by_the_next_one(db, database_url):
    db.clock.set(datetime.now(timezone.utc))
    day = datetime.now(MSK).date()
    total = seed_expiring(db, cards=600, per_card=3, expires_at=datetime.now(timezone.utc) - timedelta(days=3))

    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=database_url)
    proc = subprocess.Popen([KKM, "nightly", "--date", day.isoformat(), "--batch", "7"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while count(db, entries, entries.c.role == "expiry") < total // 5:
        assert proc.poll() is None, "the run ended before it could be killed: make the data larger"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    burnt_at_kill = count(db, entries, entries.c.role == "expiry")
    assert 0 < burnt_at_kill < total, "the kill did not land mid-run"
    assert rows(db, documents, documents.c.kind == "WriteOff")[0]["status"] == "running"

    # the next run waits for nothing: the dead run's lease is taken over once it runs out
    db.clock.set(datetime.now(timezone.utc) + timedelta(minutes=11))
    [report] = Nightly(db, batch=50).run(day)
    assert report.expired_lots == total - burnt_at_kill

    expiry = rows(db, entries, entries.c.role == "expiry")
    assert len(expiry) == total and len({e["lot_id"] for e in expiry}) == total   # each lot burnt once
    assert sum(e["amount"] for e in expiry) == -D("1.00") * total
    per_line = Counter(e["operation_id"] for e in expiry)
    assert len(per_line) == 600 and set(per_line.values()) == {3}                 # one line per card
    assert count(db, lots, lots.c.remaining != 0) == 0
    assert all(d["status"] == "done" for d in rows(db, documents))


def test_a_card_whose_deferred_lots_span_batches_gets_one_accrual_line_with_all_of_them(setup):
    db = setup
    db.add_promotion("LATE30", "late, then a month", delay_days=3, lifetime_days=30)
    db.set_card_rules("N3", accumulation_delay_days=3)
    db.register_operation(request("N3", receipt_sum="50.00", accrued="2.00", time=msk(2026, 11, 10, 14),
                                  promotion_code="LATE30"))
    db.clock.set(msk(2026, 11, 13, 2, 0))
    [report] = Nightly(db, batch=1).run(date(2026, 11, 13))   # one lot per transaction
    assert report.accrued_lots == 3 and report.accrual_lines == 1
    [line] = rows(db, operations, operations.c.kind == "Accrual")
    assert (line["bonus_accrued"], line["accumulation_delta"]) == (D("10.00"), D("50.00"))
    assert history_total(db, "N3", "bonus") == db.card_info("N3").balances.bonus


def seed_deferred(db, cards: int, days: int, cutoff: datetime) -> dict[str, D]:
    """Cards each with one Sale and ``days`` deferred bonus lots that started on different days before
    ``cutoff`` (one credit_pending entry each; lot k holds k.00). Every other card's lots are made latest day
    first, so its highest lot id is its earliest lot: a batch that cuts such a card leaves behind a lot that
    lies before the keyset's position. Returns the bonus each card's Accrual line must show."""
    from tests.helpers import new_id

    now = datetime.now(timezone.utc)
    numbers = [f"K{i:06d}" for i in range(cards)]
    db.add_card_range(0, cards - 1, "K", 6, None, issued=ISSUED)
    per_lot = {n: [D(k + 1) for k in range(days)] for n in numbers}
    ops = [dict(id=new_id(), card_number=n, kind="Sale", source="Offline", kkm="K", operation_time=now,
                business_date=now.date(), content_hash="x", receipt_sum=D("0.00"), bonus_accrued=sum(per_lot[n]),
                bonus_spent=D("0.00"), accumulation_delta=D("0.00"), receipt_count_delta=0, created_at=now)
           for n in numbers]
    with db.engine.begin() as conn:
        conn.execute(insert(operations), ops)
        for i, n in enumerate(numbers):
            order = range(days) if i % 2 == 0 else reversed(range(days))
            conn.execute(insert(lots), [dict(card_number=n, measure="bonus", remaining=per_lot[n][k],
                                             available_from=cutoff - timedelta(days=days - k, hours=i % 3),
                                             expires_at=None, created_at=now) for k in order])
        lot_rows = conn.execute(select(lots.c.id, lots.c.card_number, lots.c.remaining)).all()
        op_of = {o["card_number"]: o["id"] for o in ops}
        conn.execute(insert(entries), [dict(operation_id=op_of[c], lot_id=i, card_number=c, measure="bonus",
                                            role="credit_pending", amount=r) for i, c, r in lot_rows])
    return {n: sum(per_lot[n]) for n in numbers}


def test_an_accrual_cut_by_its_keyset_posts_every_lot_once(db, engine):
    """Small batches over cards with due lots on many days: batches cut cards (their other lots come in a later
    batch or a later sweep from the beginning), a lot is held by another transaction for the first half of the
    run (skipped, then posted by a later sweep). Every lot is posted once, each card gets one line with all of
    its lots: what one batch of everything gives."""
    from sqlalchemy import event, update

    from kkmtransfer.adapters import regulation as sql
    from kkmtransfer.domain.rules import day_start

    db.clock.set(datetime.now(timezone.utc))
    day = datetime.now(MSK).date()
    cutoff = day_start(day, db.settings.tz)
    expected = seed_deferred(db, cards=30, days=6, cutoff=cutoff)
    total = 30 * 6
    postgres = engine.dialect.name == "postgresql"

    takes = Counter()

    def spy(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().startswith("WITH x AS"):
            takes["after" if "> (" in statement else "from the start"] += 1

    held = None
    with engine.connect() as conn:  # the lot that comes first in the keyset's order: the first batch's
        first = conn.execute(select(lots.c.id).order_by(lots.c.available_from, lots.c.card_number, lots.c.id)
                             .limit(1)).scalar_one()
    if postgres:
        held = engine.connect()
        held.begin()
        held.execute(select(lots.c.id).where(lots.c.id == first).with_for_update())
    released = []

    def progress(kind, done, n):
        if held is not None and kind == sql.ACCRUAL and done >= total // 2 and not released:
            posted = count(db, lots, lots.c.accrual_document_id.is_not(None))
            assert 0 < posted < total and count(db, lots, lots.c.id == first,
                                                lots.c.accrual_document_id.is_(None)) == 1
            held.rollback()
            released.append(done)

    event.listen(engine, "before_cursor_execute", spy)
    try:
        [report] = Nightly(db, batch=5, progress=progress).run(day)
    finally:
        event.remove(engine, "before_cursor_execute", spy)
        if held is not None:
            held.close()
    if postgres:
        assert released, "the held lot was never released: make the data larger"
        assert takes["after"] > 10 and takes["from the start"] >= 2, takes  # keyset batches, then another sweep
    assert report.accrued_lots == total and report.accrual_lines == 30
    assert count(db, lots, lots.c.accrual_document_id.is_(None)) == 0
    [doc] = rows(db, documents, documents.c.kind == "Accrual")
    assert doc["status"] == "done" and doc["lines"] == 30
    lines = rows(db, operations, operations.c.kind == "Accrual")
    assert sorted((l["card_number"], l["bonus_accrued"]) for l in lines) == sorted(expected.items())
    assert count(db, lots, lots.c.accrual_document_id == doc["id"]) == total
    # the same as one batch of everything: undo the document, run it again in one batch
    with db.engine.begin() as conn:
        conn.execute(update(lots).values(accrual_document_id=None))
        conn.execute(operations.delete().where(operations.c.kind == "Accrual"))
        conn.execute(documents.delete().where(documents.c.kind == "Accrual"))
    [again] = Nightly(db, batch=10_000).run(day)
    assert (again.accrued_lots, again.accrual_lines) == (total, 30)
    assert sorted((l["card_number"], l["bonus_accrued"], l["id"])
                  for l in rows(db, operations, operations.c.kind == "Accrual")) == sorted(
        (l["card_number"], l["bonus_accrued"], l["id"]) for l in lines)


def test_line_ids_of_a_batch_are_the_line_ids_one_by_one():
    """The batch's line ids (derived without a UUID object per card) are ``line_id``'s, and the text[] literal the
    write receives reads back as the same cards, quotes and backslashes included."""
    from kkmtransfer.adapters import regulation as sql

    cards = ["B000000001", "K-7", "карта 9", 'a"b', "c\\d", "{e,f}", "g h"]
    for doc in (str(__import__("uuid").uuid4()), "2caa96c0-52c2-529f-84e5-d6aa69637a41"):
        assert sql.line_ids(doc, cards) == [sql.line_id(doc, c) for c in cards]
    assert sql._pg_array([]) == "{}"
    assert sql._pg_array(["a", "b c"]) == '{"a","b c"}'
    assert sql._pg_array(['a"b', "c\\d"]) == '{"a\\"b","c\\\\d"}'


def test_a_write_off_line_is_written_once_and_not_checked_again_by_the_same_run(db, engine):
    """Batches of one lot over a card whose lots burnt on three days: the first batch writes (and checks) the card's
    Expiry line, the later ones of the same run only add entries under it (on PostgreSQL they neither insert nor
    probe it again); the line holds all three burns."""
    from sqlalchemy import event

    db.add_card_range(1, 1, "E", 0, None, issued=ISSUED)
    db.add_promotion("SHORT", "short", lifetime_days=2)
    for day, amount in ((8, "3.00"), (9, "4.00"), (10, "5.00")):
        db.clock.set(msk(2026, 11, day))
        db.register_operation(request("E1", accrued=amount, time=msk(2026, 11, day), promotion_code="SHORT"))
    fresh = []

    def spy(conn, cursor, statement, parameters, context, executemany):
        if "WHERE v.fresh" in statement:
            fresh.append(parameters["fresh"])

    db.clock.set(msk(2026, 11, 13, 2, 0))
    event.listen(engine, "before_cursor_execute", spy)
    try:
        [report] = Nightly(db, batch=1).run(date(2026, 11, 13))
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    if engine.dialect.name == "postgresql":
        assert fresh == ["{t}", "{f}", "{f}"]
    assert (report.expired_lots, report.write_off_lines) == (3, 1)
    [line] = rows(db, operations, operations.c.kind == "Expiry")
    burns = rows(db, entries, entries.c.role == "expiry")
    assert len(burns) == 3 and {b["operation_id"] for b in burns} == {line["id"]}
    assert sorted(b["amount"] for b in burns) == [D("-5.00"), D("-4.00"), D("-3.00")]
    assert db.card_info("E1").balances.bonus == D("0.00")


def test_expiry_lines_learn_a_batch_s_cards_only_once_it_commits():
    from kkmtransfer.adapters.regulation import ExpiryLines

    lines = ExpiryLines(limit=3)
    lines.pending = {"A": "a", "B": "b"}
    assert lines.known == {}
    lines.committed()
    assert lines.known == {"A": "a", "B": "b"} and lines.pending == {}
    lines.pending = {"C": "c", "D": "d"}
    lines.committed()
    lines.pending = {"E": "e"}
    lines.committed()  # full: no more cards are kept, they are checked every time
    assert set(lines.known) == {"A", "B", "C", "D"}


def test_an_accrual_takes_as_many_candidate_cards_as_fill_its_batch(db, engine):
    """After its first batch the accrual asks for as many candidate cards as fill a batch at the lots per card it saw
    (here six), instead of a quarter of the batch, whose cards' lots beyond the batch were locked for nothing."""
    from sqlalchemy import event

    from kkmtransfer.domain.rules import day_start

    day = datetime.now(MSK).date()
    expected = seed_deferred(db, cards=10, days=6, cutoff=day_start(day, db.settings.tz))
    asked = []

    def spy(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().startswith("WITH x AS"):
            asked.append(parameters["candidates"])

    event.listen(engine, "before_cursor_execute", spy)
    try:
        [report] = Nightly(db, batch=12).run(day)
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    if engine.dialect.name == "postgresql":
        assert asked[:3] == [3, 2, 2], asked
    assert (report.accrued_lots, report.accrual_lines) == (60, 10)
    lines = rows(db, operations, operations.c.kind == "Accrual")
    assert sorted((l["card_number"], l["bonus_accrued"]) for l in lines) == sorted(expected.items())
