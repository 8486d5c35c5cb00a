"""Back office: bonus actions, zeroing, cancelling, annulment, reports, ledger verification."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import func, select, update

from kkmtransfer.adapters.db import action_cards, lots, make_engine, operations
from kkmtransfer.domain import errors
from kkmtransfer.domain.model import CardStatus
from kkmtransfer.service_layer.actions import Actions, Selection
from kkmtransfer.service_layer.nightly import Nightly
from kkmtransfer.service_layer.reports import Reports

from .conftest import empty_tables
from .helpers import ISSUED, request

MSK = ZoneInfo("Europe/Moscow")
KKM = str(Path(sys.executable).parent / "kkmtransfer")


def msk(y, m, d, hh=12) -> datetime:
    return datetime(y, m, d, hh, tzinfo=MSK)


def count(db, table, *where) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


@pytest.fixture
def cards(db):
    db.add_card_range(1, 5, "B", 0, None, issued=ISSUED)
    db.clock.set(msk(2026, 11, 10))
    return db


def bonus(db, card):
    return db.card_info(card).balances.bonus


def test_a_credit_action_credits_each_card_once_and_respects_its_last_day(cards):
    db = cards
    db.set_card_status("B3", CardStatus.BLOCKED)
    db.register_operation(request("B1", accrued="5.00", time=msk(2026, 11, 10)))
    db.register_operation(request("B1", receipt_sum="1.00", spent="5.00", time=msk(2026, 11, 10)))
    # B2 owes 4.00 (a return took back bonuses already spent): the action pays the debt first
    sale = request("B2", accrued="4.00", time=msk(2026, 11, 10))
    db.register_operation(sale)
    db.register_operation(request("B2", spent="4.00", time=msk(2026, 11, 10)))
    db.register_operation(request("B2", kind="Return", accrued="4.00", receipt_sum="0.00", time=msk(2026, 11, 10),
                                  original_operation_id=sale.operation_id))
    assert bonus(db, "B2") == D("-4.00")

    actions = Actions(db, batch=2)
    dry = actions.credit("10.00", Selection(first="B1", last="B4"), until=date(2026, 11, 30), note="Nov",
                         dry_run=True)
    assert dry.dry_run and dry.cards == 4 and count(db, action_cards) == 0
    report = actions.credit("10.00", Selection(first="B1", last="B4"), until=date(2026, 11, 30), note="Nov")
    assert (report.cards, report.done, report.skipped, report.amount) == (4, 3, 1, D("30.00"))
    assert [bonus(db, c) for c in ("B1", "B2", "B3", "B4", "B5")] == [D("10.00"), D("6.00"), D("0.00"),
                                                                      D("10.00"), D("0.00")]
    again = actions.credit("10.00", Selection(first="B1", last="B4"), until=date(2026, 11, 30), note="Nov")
    assert again.already_done and bonus(db, "B1") == D("10.00")
    b = db.card_info("B4").balances
    assert (b.next_expiry_date, b.next_expiry_amount) == (date(2026, 12, 1), D("10.00"))
    db.clock.set(msk(2026, 12, 1, 0))
    assert bonus(db, "B4") == D("0.00")
    with pytest.raises(errors.ValidationError, match="past"):
        actions.credit("1.00", Selection(all_active=True), until=date(2026, 11, 30))


def test_a_credit_action_killed_mid_way_and_run_again_credits_each_card_once(db, database_url):
    db.add_card_range(1, 1500, "M", 5, None, issued=ISSUED)
    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=database_url)
    command = [KKM, "actions", "credit", "--amount", "3.00", "--all-active", "--note", "crash", "--batch", "10",
               "--yes"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while count(db, operations) < 200:
        assert proc.poll() is None, "the action ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = count(db, operations)
    assert 0 < done_at_kill < 1500
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert count(db, operations) == 1500
    with db.engine.connect() as conn:
        per_card = conn.execute(select(operations.c.card_number, func.count()).group_by(operations.c.card_number)
                                .having(func.count() != 1)).all()
    assert per_card == []
    assert {bonus(db, n) for n in ("M00001", "M00750", "M01500")} == {D("3.00")}


def test_cancel_after_a_partial_spend_takes_back_what_is_left_and_reports_the_rest(cards):
    db = cards
    actions = Actions(db)
    report = actions.credit("20.00", Selection(numbers=("B1", "B2")), note="gift")
    db.register_operation(request("B1", receipt_sum="50.00", spent="15.00", time=msk(2026, 11, 10)))
    db.register_operation(request("B2", accrued="7.00", time=msk(2026, 11, 10)))
    cancel = actions.cancel(report.action_id)
    assert (cancel.cards, cancel.taken_back, cancel.kept) == (2, D("25.00"), D("15.00"))
    assert cancel.kept_by_card == [("B1", D("15.00"))]
    assert (bonus(db, "B1"), bonus(db, "B2")) == (D("0.00"), D("7.00"))
    assert actions.get(report.action_id)["status"] == "cancelled"
    assert actions.cancel(report.action_id).taken_back == D("25.00")   # again: nothing more happens
    assert (bonus(db, "B1"), bonus(db, "B2")) == (D("0.00"), D("7.00"))
    with pytest.raises(errors.ValidationError, match="cancelled"):
        actions.credit("20.00", Selection(numbers=("B1", "B2")), note="gift")


@pytest.mark.parametrize("kind", ["credit", "zero"])
def test_two_cancels_of_one_action_at_once_reverse_each_card_once(db, kind):
    """Two ``actions cancel ID`` at once (two terminals, or the console's worker and a terminal): one
    does it, the other says in one line that the action is being (or was) cancelled; no IdTaken, each
    card reversed once, the ledger clean."""
    import threading

    from kkmtransfer.service_layer.actions import CancelBusy

    db.add_card_range(1, 60, "K", 0, None, issued=ISSUED)
    db.clock.set(msk(2026, 11, 10))
    numbers = tuple(f"K{i}" for i in range(1, 61))
    for round_ in range(3):
        if kind == "credit":
            report = Actions(db).credit("3.00", Selection(numbers=numbers), note=f"twice {round_}")
        else:
            for n in numbers:
                db.register_operation(request(n, accrued="2.00", time=msk(2026, 9, 1)))
            report = Actions(db).zero(date(2026, 10, 1 + round_), note=f"twice {round_}")
        assert report.done == 60
        before = {n: bonus(db, n) for n in numbers[:3]}
        barrier, outcomes = threading.Barrier(2), []

        def cancel():
            barrier.wait()
            try:
                outcomes.append(Actions(db, batch=4).cancel(report.action_id))
            except CancelBusy as exc:
                outcomes.append(exc)
            except Exception as exc:  # noqa: BLE001 - anything else is the defect (e.g. IdTaken)
                outcomes.append(exc)

        threads = [threading.Thread(target=cancel) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(outcomes) == 2
        unexpected = [o for o in outcomes if isinstance(o, Exception) and not isinstance(o, CancelBusy)]
        assert unexpected == []
        busy = [o for o in outcomes if isinstance(o, CancelBusy)]
        assert all("being cancelled by another command" in b.message and "\n" not in b.message for b in busy)
        reports = [o for o in outcomes if not isinstance(o, Exception)]
        assert [r.already for r in reports].count(False) == 1       # exactly one finished it
        assert all(r.cards == 60 for r in reports)
        assert Actions(db).get(report.action_id)["status"] == "cancelled"
        annulments = count(db, operations, operations.c.kind == "Annulment",
                           operations.c.original_operation_id.in_(select(operations.c.id).where(
                               operations.c.note.like(f"%twice {round_}%"))))
        assert annulments == 60
        if kind == "credit":
            assert {n: bonus(db, n) for n in numbers[:3]} == {n: before[n] - D("3.00") for n in numbers[:3]}
        else:
            assert {n: bonus(db, n) for n in numbers[:3]} == {n: before[n] + D("2.00") * (round_ + 1)
                                                              for n in numbers[:3]}
        assert Reports(db).verify() == []


def test_zeroing_burns_only_non_expiring_bonuses_of_inactive_cards_and_can_be_undone(cards):
    db = cards
    db.add_promotion("DATED", "dated", lifetime_days=120)
    db.register_operation(request("B1", accrued="8.00", time=msk(2026, 9, 1)))                  # inactive
    db.register_operation(request("B1", accrued="5.00", time=msk(2026, 9, 1), promotion_code="DATED"))
    db.register_operation(request("B2", accrued="9.00", time=msk(2026, 11, 5)))                 # active
    Actions(db).credit("2.00", Selection(numbers=("B3",)))                                       # no purchase
    actions = Actions(db)
    report = actions.zero(date(2026, 10, 1), note="sleepers")
    assert (report.done, report.amount) == (2, D("10.00"))
    assert [bonus(db, c) for c in ("B1", "B2", "B3")] == [D("5.00"), D("9.00"), D("0.00")]
    assert db.card_info("B1").balances.next_expiry_amount == D("5.00")       # the dated 5.00 untouched
    [line] = [h for h in db.card_operations("B1", date(2026, 11, 10), date(2026, 11, 10)) if h.kind == "Zeroing"]
    assert line.bonus == D("-8.00") and line.source == "BackOffice"
    undo = actions.cancel(report.action_id)
    assert undo.taken_back == D("10.00") and [bonus(db, c) for c in ("B1", "B3")] == [D("13.00"), D("2.00")]


def test_annulling_a_partly_returned_receipt_takes_back_only_what_is_left(cards):
    db = cards
    db.register_operation(request("B1", accrued="3.00", time=msk(2026, 11, 10)))
    sale = request("B1", receipt_sum="300.00", accrued="30.00", time=msk(2026, 11, 10))
    db.register_operation(sale)
    db.register_operation(request("B1", kind="Return", receipt_sum="100.00", accrued="10.00", time=msk(2026, 11, 10),
                                  original_operation_id=sale.operation_id))
    result, amount = db.annul_receipt(sale.operation_id)
    assert amount == D("20.00") and result.card.balances.bonus == D("3.00")
    again, _ = db.annul_receipt(sale.operation_id)
    assert again.status == "AlreadyApplied" and bonus(db, "B1") == D("3.00")
    # a later return of the rest of the goods is taken, and takes no bonus back a second time
    db.register_operation(request("B1", kind="Return", receipt_sum="200.00", accrued="20.00", time=msk(2026, 11, 10),
                                  original_operation_id=sale.operation_id))
    assert bonus(db, "B1") == D("3.00")
    with pytest.raises(errors.OriginalNotFound):
        db.annul_receipt("00000000-0000-4000-8000-000000000000")


def test_annulling_a_fully_returned_receipt_changes_nothing(cards):
    db = cards
    sale = request("B1", receipt_sum="100.00", accrued="10.00", time=msk(2026, 11, 10))
    db.register_operation(sale)
    db.register_operation(request("B1", kind="Return", receipt_sum="100.00", accrued="10.00", time=msk(2026, 11, 10),
                                  original_operation_id=sale.operation_id))
    _, amount = db.annul_receipt(sale.operation_id)
    assert amount == D("0.00") and bonus(db, "B1") == D("0.00")


def test_ledger_verify_finds_drift(cards):
    db = cards
    db.register_operation(request("B1", accrued="5.00", time=msk(2026, 11, 10)))
    assert Reports(db).verify() == []
    with db.engine.begin() as conn:
        conn.execute(update(lots).where(lots.c.card_number == "B1", lots.c.measure == "bonus").values(remaining=D("6.00")))
    problems = Reports(db).verify()
    assert any("entries sum to 5.00" in p for p in problems)
    with db.engine.begin() as conn:  # put it right, or the fixture's own check fails
        conn.execute(update(lots).where(lots.c.card_number == "B1", lots.c.measure == "bonus").values(remaining=D("5.00")))


# -- property: the books add up, whatever happens ---------------------------------------------------
EVENTS = st.lists(st.tuples(
    st.sampled_from(["sale", "spend", "return", "deferred", "dated", "action", "annul", "days", "nightly"]),
    st.integers(0, 2),                       # card
    st.integers(1, 4000).map(lambda c: D(c).scaleb(-2)),  # an amount
    st.integers(0, 5),                       # which earlier sale / how many days
), min_size=1, max_size=25)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=EVENTS)
def test_opening_plus_turnovers_is_closing_on_random_streams(db, engine, events):
    empty_tables(engine)
    db.add_card_range(0, 2, "H", 0, None, issued=ISSUED)
    db.add_promotion("LATE", "late", delay_days=2, lifetime_days=3)
    db.add_promotion("SHORT", "short", lifetime_days=2)
    day0 = date(2026, 1, 1)
    now = msk(2026, 1, 1, 10)
    sales: list = []
    for kind, card_no, amount, pick in events:
        card = f"H{card_no}"
        db.clock.set(now.astimezone(timezone.utc))
        try:
            if kind in ("sale", "deferred", "dated"):
                promo = {"deferred": "LATE", "dated": "SHORT"}.get(kind)
                req = request(card, receipt_sum=str(amount * 10), accrued=str(amount), time=now, promotion_code=promo)
                db.register_operation(req)
                sales.append(req)
            elif kind == "spend":
                db.register_operation(request(card, receipt_sum=str(amount), spent=str(amount), time=now))
            elif kind == "return" and sales:
                sale = sales[pick % len(sales)]
                db.register_operation(request(sale.card_number, kind="Return", receipt_sum="0.00",
                                              accrued=str(min(amount, sale.bonus_accrued)), time=now,
                                              original_operation_id=sale.operation_id))
            elif kind == "action":
                Actions(db).credit(amount, Selection(numbers=(card,)), note=f"{now.isoformat()}")
            elif kind == "annul" and sales:
                db.annul_receipt(sales[pick % len(sales)].operation_id)
            elif kind == "days":
                now += timedelta(days=pick + 1)
            elif kind == "nightly":
                Nightly(db).run(now.astimezone(MSK).date())
        except (errors.InsufficientBonus, errors.ReturnExceedsSale):
            pass  # refused operations are part of the stream: they must leave no trace
    now += timedelta(days=1)
    db.clock.set(now.astimezone(timezone.utc))
    today = now.astimezone(MSK).date()
    Nightly(db).run(today)   # the books catch up with what the clock already shows

    reports = Reports(db)
    whole = reports.balances(day0, today)
    split = day0 + (today - day0) / 2
    early, late = reports.balances(day0, split), reports.balances(split + timedelta(days=1), today)
    late_by_key = {(l.card, l.measure): l for l in late.lines}
    for line in whole.lines:
        assert line.opening == D("0.00") and line.balanced(), line
        # the closing of one period is the opening of the next
        [first_half] = [l for l in early.lines if (l.card, l.measure) == (line.card, line.measure)]
        assert first_half.closing == late_by_key[(line.card, line.measure)].opening
        assert late_by_key[(line.card, line.measure)].closing == line.closing
    for l in late.lines:
        assert l.balanced(), l
    closing = {(l.card, l.measure): l.closing for l in whole.lines}
    for card in ("H0", "H1", "H2"):  # the books' closing is what a register reads (pending starts later)
        b = db.card_info(card).balances
        assert closing.get((card, "bonus"), D("0.00")) == b.bonus
        assert closing.get((card, "accumulation"), D("0.00")) == b.accumulation
        assert closing.get((card, "receipt_count"), D("0.00")) == b.receipt_count
    assert Reports(db).verify() == []


# -- resuming across midnight, identical commands at once, serialised billing enable and db upgrade ----------
class Interrupted(Exception):
    pass


def test_an_action_interrupted_before_midnight_resumes_after_it_without_crediting_twice(db):
    db.add_card_range(1, 7, "R", 0, None, issued=ISSUED)
    db.clock.set(datetime(2026, 11, 10, 23, 50, tzinfo=MSK))
    batches = []

    def crash_after_two(n):
        batches.append(n)
        if len(batches) == 2:
            raise Interrupted()

    with pytest.raises(Interrupted):
        Actions(db, batch=2, progress=crash_after_two).credit("4.00", Selection(first="R1", last="R7"), note="x")
    credited = [c for c in ("R1", "R2", "R3", "R4", "R5", "R6", "R7") if bonus(db, c) == D("4.00")]
    assert len(credited) == 4
    db.clock.set(datetime(2026, 11, 11, 0, 10, tzinfo=MSK))      # the next business day
    report = Actions(db, batch=2).credit("4.00", Selection(first="R1", last="R7"), note="x")
    assert report.resumed and (report.cards, report.done, report.amount) == (7, 7, D("28.00"))
    assert {bonus(db, c) for c in ("R1", "R2", "R3", "R4", "R5", "R6", "R7")} == {D("4.00")}
    assert count(db, operations) == 7
    [action] = Actions(db).list()
    assert action["status"] == "done"
    assert Actions(db).cancel(report.action_id).taken_back == D("28.00")


def test_two_identical_actions_at_once_credit_each_card_once_and_the_loser_gets_one_line(db):
    import threading

    db.add_card_range(1, 60, "T", 3, None, issued=ISSUED)
    db.clock.set(msk(2026, 11, 10))
    outcomes, barrier = [], threading.Barrier(4)

    def run():
        barrier.wait()
        try:
            outcomes.append(Actions(db, batch=5).credit("2.00", Selection(all_active=True), note="twin"))
        except errors.DomainError as exc:
            outcomes.append(exc)
        except Exception as exc:  # noqa: BLE001 - an IntegrityError traceback is the failure looked for
            outcomes.append(("unexpected", exc))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [o for o in outcomes if isinstance(o, tuple)], outcomes
    assert all("\n" not in o.message for o in outcomes if isinstance(o, errors.DomainError))
    assert any(not isinstance(o, errors.DomainError) for o in outcomes)
    assert count(db, operations) == 60
    assert {bonus(db, f"T{n:03d}") for n in range(1, 61)} == {D("2.00")}
    final = Actions(db).credit("2.00", Selection(all_active=True), note="twin")
    assert final.done == 60 or final.already_done


def test_billing_enable_at_once_four_times_starts_once_and_the_others_get_one_line(db, tmp_path):
    import threading

    from kkmtransfer.service_layer.billing_admin import BillingAdmin

    db.add_card_range(1, 50, "S", 2, None, issued=ISSUED)
    db.clock.set(msk(2026, 11, 10))
    opening = tmp_path / "open.csv"
    opening.write_text("CardNumber;Bonus;Accumulation;ReceiptCount\n"
                       + "".join(f"S{n:02d};10.00;0;1\n" for n in range(1, 51)), encoding="utf-8")
    outcomes, barrier = [], threading.Barrier(4)

    def run():
        barrier.wait()
        try:
            outcomes.append(BillingAdmin(db).enable(date(2026, 11, 1), opening))
        except errors.DomainError as exc:
            outcomes.append(exc)
        except Exception as exc:  # noqa: BLE001
            outcomes.append(("unexpected", exc))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(str, outcomes)).count("50") == 1, outcomes
    assert all(isinstance(o, errors.ValidationError) and "enabled already" in o.message
               for o in outcomes if o != 50), outcomes
    assert count(db, operations) == 50 and bonus(db, "S07") == D("10.00")


def _four_upgrades(url: str) -> None:
    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=url)
    procs = [subprocess.Popen([KKM, "db", "upgrade"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    results = [(p.wait(120), p.stdout.read(), p.stderr.read()) for p in procs]
    assert [r[0] for r in results] == [0, 0, 0, 0], results
    assert not any("Traceback" in r[2] for r in results), results
    from kkmtransfer.adapters.migrate import current_revision, head_revision

    engine = make_engine(url)
    try:
        assert current_revision(engine) == head_revision(url)
    finally:
        engine.dispose()


def test_four_db_upgrades_at_once_all_succeed_on_sqlite(tmp_path):
    _four_upgrades(f"sqlite:///{tmp_path / 'up.sqlite3'}")


def test_a_sqlite_upgrade_waits_for_the_one_running(tmp_path):
    """What keeps two upgrades of one SQLite file apart (pysqlite's DDL takes no write lock): the lock file
    beside the database. While another holds it, ``db upgrade`` says so in one line and waits; then it runs."""
    import fcntl

    database = tmp_path / "wait.sqlite3"
    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=f"sqlite:///{database}")
    with open(f"{database}.upgrade-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen([KKM, "db", "upgrade"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        time.sleep(3)
        assert proc.poll() is None  # waiting for the lock
        assert not database.exists() or database.stat().st_size == 0  # and nothing created meanwhile
        fcntl.flock(lock, fcntl.LOCK_UN)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (out, err)
    assert "another upgrade is running: waiting for it to finish" in err
    assert "database is at revision" in out and "Traceback" not in err


@pytest.mark.postgres
def test_four_db_upgrades_at_once_all_succeed(pg_admin):
    import uuid as _uuid

    from sqlalchemy import text

    from .conftest import PG_URL

    name = f"kkmup_{_uuid.uuid4().hex[:10]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    try:
        _four_upgrades(url)
    finally:
        with pg_admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                         {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))


def test_the_fast_batch_ids_are_the_action_operation_ids():
    import uuid

    from kkmtransfer.service_layer.actions import _uuid5_many

    action = str(uuid.uuid4())
    names = ["B1", "C0000001", "Ж-карта", "x" * 32, ""]
    assert _uuid5_many(action, names) == [Actions._op_id(action, n) for n in names]


def test_a_bonus_action_marks_its_cards_done_on_the_page_they_were_recorded_on(db):
    """PostgreSQL: a card's progress (pending -> done, with its amount) is a HOT update of its action_cards row,
    which fillfactor 45 leaves room for (migration 0014): the row's new version stays on its page and the primary
    key gets no new entry. At the default fill the pages recorded when the action starts are full, and every
    card of the second batch on would move to a new page."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("fillfactor and HOT updates are PostgreSQL's")
    from sqlalchemy import text

    db.add_card_range(1, 300, "P", 3, None, issued=ISSUED)
    db.clock.set(msk(2026, 11, 10))
    page = text("SELECT card_number, (ctid::text::point)[0] FROM action_cards WHERE state = :state")
    recorded = {}

    def note_pages(n):
        if not recorded:  # after the first batch: where the cards still pending were written at the start
            with db.engine.connect() as conn:
                recorded.update(conn.execute(page, {"state": "pending"}).all())

    report = Actions(db, batch=100, progress=note_pages).credit("1.00", Selection(all_active=True), note="hot")
    assert report.done == 300 and len(recorded) == 200
    with db.engine.connect() as conn:
        now = dict(conn.execute(page, {"state": "done"}).all())
    moved = [n for n, p in recorded.items() if now[n] != p]
    assert moved == []


def test_a_batch_sends_its_card_numbers_as_one_text_array_that_postgresql_reads_back_exactly(db):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("the array literal is PostgreSQL's")
    from sqlalchemy import text

    from kkmtransfer.service_layer.actions import _pg_text_array

    numbers = ["B1", "a,b", 'q"uote', "back\\slash", "{br}", " sp ace ", "NULL", "Ж-карта", ""]
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT CAST(:a AS text[])"), {"a": _pg_text_array(numbers)}).scalar() == numbers
