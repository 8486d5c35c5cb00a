"""Celery: a real worker on the local Redis consumes the nightly regulation sent through the broker.

The worker is a subprocess (``celery -A kkmtransfer.tasks worker --pool solo``) configured only through
the environment, as in production: KKMTRANSFER_BROKER_URL / KKMTRANSFER_RESULT_BACKEND point at a Redis
database of its own (flushed first) and KKMTRANSFER_DATABASE_URL at the test database, so the test runs
on SQLite and on PostgreSQL. Each worker listens on a queue of its own, so no other worker can take the
task. The worker runs on the real clock: the receipts are registered with real past dates.
"""
from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import date, datetime, time as clock_time, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from kkmtransfer.adapters.db import documents, entries, operations
from kkmtransfer.tasks import app as celery_app
from kkmtransfer.tasks import nightly_regulation

from .conftest import unavailable
from .helpers import ISSUED, request

REDIS_URL = os.environ.get("KKMTRANSFER_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
ROOT = Path(__file__).resolve().parent.parent
TZ_NAME = "Europe/Moscow"  # the zone of the `settings` fixture (the default)


@pytest.fixture(scope="module")
def redis_url():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
        client.flushdb()
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        unavailable("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(scope="module")
def client_app(redis_url):
    """A Celery app configured like kkmtransfer.tasks.app (celeryconfig) but pointed at the test broker,
    so the process-wide app's configuration is left alone."""
    from celery import Celery

    client = Celery("kkmtransfer-test-client", set_as_current=False)
    client.config_from_object("celeryconfig")
    client.conf.update(broker_url=redis_url, result_backend=redis_url)
    yield client
    client.close()


WORKER_LOGS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def worker(database_url, redis_url, client_app, tmp_path_factory):
    """A real worker process on the test database; yields the name of the queue it consumes."""
    tag = uuid.uuid4().hex[:8]
    queue, node = f"kkmtest-{tag}", f"kkmtest-{tag}@localhost"
    log = tmp_path_factory.mktemp("celery") / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KKMTRANSFER_")}
    env.update(KKMTRANSFER_BROKER_URL=redis_url, KKMTRANSFER_RESULT_BACKEND=redis_url,
               KKMTRANSFER_DATABASE_URL=database_url, KKMTRANSFER_TIMEZONE=TZ_NAME)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "kkmtransfer.tasks", "worker", "--pool", "solo",
             "--concurrency", "1", "--loglevel", "INFO", "--queues", queue, "--hostname", node,
             "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def stop():
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the Celery worker exited ({proc.returncode}):\n{log.read_text()}", pytrace=False)
        if client_app.control.ping(destination=[node], timeout=1.0):
            break
        if time.monotonic() > deadline:
            stop()
            pytest.fail(f"the Celery worker did not answer a ping in 60 s:\n{log.read_text()}", pytrace=False)
    WORKER_LOGS[queue] = log
    yield queue
    stop()
    if proc.returncode not in (0, -15):
        print(log.read_text())


def send_nightly(client_app, queue: str, day: date) -> list[dict]:
    result = client_app.send_task(nightly_regulation.name, kwargs={"day": day.isoformat()}, queue=queue)
    return result.get(timeout=60)


def counts(engine) -> dict:
    with engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (documents, operations, entries)}


def at_noon(day: date, tz) -> datetime:
    return datetime.combine(day, clock_time(12), tzinfo=tz)


def test_worker_consumes_the_nightly_task_from_the_broker(db, worker, client_app):
    tz = db.settings.tz
    assert db.settings.timezone_name == TZ_NAME
    today = datetime.now(tz).date()
    card = db.add_card_range(1, 1, "CEL", 0, None, issued=ISSUED).created[0]
    db.add_promotion("SHORT", "short", delay_days=0, lifetime_days=1)
    db.add_promotion("LATER", "deferred a day", delay_days=1)

    # 3 days ago: 10.00 usable on that day only, burnt at the start of the next day
    short_time = at_noon(today - timedelta(days=3), tz)
    db.clock.set(short_time)  # registered when it happened, so it lands in a live lot
    db.register_operation(request(card, accrued="10.00", time=short_time, promotion_code="SHORT"))
    # 2 days ago: 7.50 usable from yesterday on
    later_time = at_noon(today - timedelta(days=2), tz)
    db.clock.set(later_time)
    db.register_operation(request(card, accrued="7.50", time=later_time, promotion_code="LATER"))
    db.clock.fixed = None

    before = db.card_info(card).balances
    assert before.bonus == D("7.50") and before.bonus_pending == D("0.00")  # the clock needs no regulation
    written_before = counts(db.engine)
    assert written_before["documents"] == 0

    reports = send_nightly(client_app, worker, today)

    assert reports == [dict(day=today.isoformat(), expired_lots=1, accrued_lots=1, write_off_lines=1,
                            accrual_lines=1, skipped=False)]
    with db.engine.connect() as conn:
        docs = {r.kind: r for r in conn.execute(select(documents)).all()}
        assert set(docs) == {"WriteOff", "Accrual"}
        for doc in docs.values():
            assert (doc.business_date, doc.status, doc.lines) == (today, "done", 1)
            assert doc.completed_at is not None and doc.leased_by is None

        nightly_ops = conn.execute(select(operations).where(operations.c.source == "Nightly")).mappings().all()
        assert {op["kind"] for op in nightly_ops} == {"Expiry", "Accrual"}
        expiry = next(op for op in nightly_ops if op["kind"] == "Expiry")
        accrual = next(op for op in nightly_ops if op["kind"] == "Accrual")
        assert expiry["card_number"] == accrual["card_number"] == card
        assert expiry["document_id"] == docs["WriteOff"].id
        assert accrual["document_id"] == docs["Accrual"].id
        assert expiry["business_date"] == accrual["business_date"] == today

        burnt = conn.execute(select(entries).where(entries.c.operation_id == expiry["id"])).mappings().all()
        assert [(e["measure"], e["role"], e["amount"]) for e in burnt] == [("bonus", "expiry", D("-10.00"))]
        assert conn.execute(select(func.count()).select_from(entries)
                            .where(entries.c.operation_id == accrual["id"])).scalar_one() == 0
        assert accrual["bonus_accrued"] == D("7.50")
        assert accrual["accumulation_delta"] == D("0.00") and accrual["receipt_count_delta"] == 0

    assert db.card_info(card).balances == before  # the run put in the books what had already happened

    # the lines are in the card's history, source Nightly
    history = db.card_operations(card, today - timedelta(days=3), today)
    shown = [(op.kind, op.source, op.bonus) for op in history if op.source == "Nightly"]
    assert sorted(shown) == [("Accrual", "Nightly", D("7.50")), ("Expiry", "Nightly", D("-10.00"))]

    # the same task again: the date is done, nothing more is written
    written = counts(db.engine)
    assert written == dict(documents=2, operations=written_before["operations"] + 2,
                           entries=written_before["entries"] + 1)
    again = send_nightly(client_app, worker, today)
    assert again == [dict(day=today.isoformat(), expired_lots=0, accrued_lots=0, write_off_lines=1,
                          accrual_lines=1, skipped=True)]
    assert counts(db.engine) == written
    assert db.card_info(card).balances == before


def test_beat_schedule_and_task_limits():
    from celery.schedules import crontab

    conf = celery_app.conf
    assert conf.timezone == (os.environ.get("KKMTRANSFER_TIMEZONE") or "Europe/Moscow")
    entries_ = [e for e in conf.beat_schedule.values() if e["task"] == nightly_regulation.name]
    assert len(entries_) == 1, conf.beat_schedule
    schedule = entries_[0]["schedule"]
    assert isinstance(schedule, crontab)
    assert schedule == crontab(hour=2, minute=0)  # every day of the week and of the month
    assert schedule.hour == {2} and schedule.minute == {0}
    assert schedule.day_of_week == set(range(7)) and schedule.day_of_month == set(range(1, 32))
    assert schedule.month_of_year == set(range(1, 13))
    # the crontab is read in the app's zone: its next run is 02:00 there
    in_app = copy.copy(schedule)
    in_app.app = celery_app
    assert str(in_app.tz) == conf.timezone
    for last_run, next_run in ((datetime(2026, 3, 15, 23, 30), datetime(2026, 3, 16, 2, 0)),
                               (datetime(2026, 3, 16, 1, 59), datetime(2026, 3, 16, 2, 0)),
                               (datetime(2026, 3, 16, 2, 0), datetime(2026, 3, 17, 2, 0))):
        start, delta, _ = in_app.remaining_delta(last_run.replace(tzinfo=in_app.tz))
        assert (start + delta).replace(tzinfo=None) == next_run
        assert (start + delta).utcoffset() == next_run.replace(tzinfo=in_app.tz).utcoffset()

    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert 0 < conf.task_soft_time_limit < conf.task_time_limit
    visibility = conf.broker_transport_options.get("visibility_timeout")
    assert visibility is not None and visibility > conf.task_time_limit  # Redis does not redeliver a running task
    assert (os.environ.get("KKMTRANSFER_BROKER_URL") or "redis://127.0.0.1:6379/0") == conf.broker_url


def _hold_lease(db, day: date, runner: str, until: datetime) -> None:
    from kkmtransfer.adapters import regulation as sql

    with db.engine.begin() as conn:
        doc = sql.ensure_document(conn, sql.WRITE_OFF, day, datetime.now(timezone.utc))
        conn.execute(update(documents).where(documents.c.id == doc["id"]).values(leased_by=runner, lease_until=until))


def test_a_redelivered_nightly_takes_over_the_lease_of_a_dead_worker(db, worker, client_app):
    """A worker killed mid-run leaves its lease; the task delivered again must not fail on it."""
    today = datetime.now(db.settings.tz).date()
    dead = subprocess.Popen(["true"])
    dead.wait()
    _hold_lease(db, today, f"{socket.gethostname()}:{dead.pid}:deadbeef",
                datetime.now(timezone.utc) + timedelta(minutes=10))
    [report] = send_nightly(client_app, worker, today)
    assert report["day"] == today.isoformat()
    with db.engine.connect() as conn:
        assert set(conn.execute(select(documents.c.status)).scalars()) == {"done"}


def test_a_nightly_busy_on_a_live_lease_is_retried_when_the_lease_ends(db, worker, client_app):
    today = datetime.now(db.settings.tz).date()
    _hold_lease(db, today, "another-host:1:cafe", datetime.now(timezone.utc) + timedelta(seconds=3))
    result = client_app.send_task(nightly_regulation.name, kwargs={"day": today.isoformat()}, queue=worker)
    [report] = result.get(timeout=60)
    assert report["day"] == today.isoformat()
    assert "trying again in" in WORKER_LOGS[worker].read_text()


def test_an_expected_error_is_one_log_line_not_a_traceback(db, worker, client_app):
    log = WORKER_LOGS[worker]
    before = len(log.read_text())
    future = datetime.now(db.settings.tz).date() + timedelta(days=5)
    result = client_app.send_task(nightly_regulation.name, kwargs={"day": future.isoformat()}, queue=worker)
    with pytest.raises(Exception, match="in the future"):
        result.get(timeout=60)
    bad = client_app.send_task(nightly_regulation.name, kwargs={"day": "tomorrow"}, queue=worker)
    with pytest.raises(Exception, match="not a date"):
        bad.get(timeout=60)
    time.sleep(0.5)
    written = log.read_text()[before:]
    assert "in the future" in written and "not a date" in written
    assert "Traceback" not in written and "raised unexpected" not in written, written
