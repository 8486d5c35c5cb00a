"""The console's bonus actions (preview, confirm, progress, cancel) and journal rejects (retry,
dismiss), through Flask's test client on SQLite and PostgreSQL. The long jobs are the same functions
the Celery worker runs (kkmtransfer.console_tasks.JOBS); here a dispatcher runs them in-process."""
from __future__ import annotations

import io
import logging
from decimal import Decimal as D

import pytest
from sqlalchemy import func, select

from kkmtransfer.adapters.db import actions, journal_rejects
from kkmtransfer.console_tasks import CREDIT_TASK, JOBS
from kkmtransfer.service_layer.journal import JournalImport
from kkmtransfer.service_layer.operators import Operators
from kkmtransfer.web import create_app

from .helpers import ISSUED, request
from .test_journal import line, journal
from .test_web import audit_lines
from .web_helpers import PASSWORDS, SECRET, csrf_of, login

CARDS = [f"A{n:03d}" for n in range(1, 6)]


class Dispatcher:
    """Runs each job at once, in-process, on the test's BillingService (or refuses, like a dead broker)."""

    def __init__(self, billing):
        self.billing, self.sent, self.broken = billing, [], False

    def __call__(self, name, kwargs):
        if self.broken:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.sent.append((name, kwargs))
        JOBS[name](self.billing, **kwargs)


@pytest.fixture
def jobs(db):
    return Dispatcher(db)


@pytest.fixture
def app(db, jobs):
    db.add_card_range(1, 5, "A", 3, None, issued=ISSUED)
    for role, password in PASSWORDS.items():
        Operators(db).add(role, role, password)
    return create_app(db, SECRET, dispatch=jobs)


def client(app, role):
    c = app.test_client()
    assert login(c, role, PASSWORDS[role]).status_code == 302
    return c


def balances(db):
    return [db.card_info(n).balances.bonus for n in CARDS]


def n_actions(db):
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(actions)).scalar_one()


def preview_credit(c, **form):
    token = csrf_of(c.get("/actions/credit").get_data(as_text=True))
    return c.post("/actions/credit", data=dict(csrf_token=token, **form), content_type="multipart/form-data")


def confirm(c, preview_html: str, action: str):
    """Post the confirmation form of a preview page as the browser would: its hidden fields."""
    import re

    form = preview_html.split(f'action="{action}"')[1].split("</form>")[0]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))
    return c.post(action, data=fields)


def test_credit_preview_changes_nothing_then_confirm_credits_and_cancel_takes_back(app, db, jobs, caplog):
    caplog.set_level(logging.INFO, "kkmtransfer.audit")
    op = client(app, "operator")
    r = preview_credit(op, how="range", first="A002", last="A004", amount="12,50", until="", note="Открытие")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert 'id="preview-cards">3<' in html and 'id="preview-amount">37,50<' in html
    assert n_actions(db) == 0 and balances(db) == [D("0.00")] * 5 and jobs.sent == []

    r = confirm(op, html, "/actions/credit/confirm")
    assert r.status_code == 302 and "/actions/" in r.headers["Location"]
    assert [name for name, _ in jobs.sent] == [CREDIT_TASK]
    assert balances(db) == [D("0.00"), D("12.50"), D("12.50"), D("12.50"), D("0.00")]
    page = op.get(r.headers["Location"]).get_data(as_text=True)
    assert 'data-status="done"' in page and "(100%)" in page
    assert audit_lines(caplog, operator="operator", command="actions.credit", outcome="queued")
    assert audit_lines(caplog, operator="operator", command="actions.credit", outcome="done")

    # the same confirmation again (a double click): the action is the same, nothing is credited twice
    confirm(op, html, "/actions/credit/confirm")
    assert balances(db) == [D("0.00"), D("12.50"), D("12.50"), D("12.50"), D("0.00")] and n_actions(db) == 1

    db.register_operation(request("A002", spent="10.00"))
    action_id = r.headers["Location"].split("/actions/")[1].split("?")[0]
    token = csrf_of(page)
    assert op.post(f"/actions/{action_id}/cancel", data={"csrf_token": token}).status_code == 302
    # what was left of the action is taken back; the 10.00 spent from it is kept (and reported)
    assert balances(db) == [D("0.00")] * 5
    assert audit_lines(caplog, operator="operator", command="actions.cancel", outcome="done")[0].endswith(
        "27.50 reversed, 10.00 kept")
    assert 'data-status="cancelled"' in op.get(f"/actions/{action_id}").get_data(as_text=True)
    assert "Отменена" in op.get("/actions/").get_data(as_text=True)


def test_credit_to_the_cards_of_an_uploaded_file(app, db):
    op = client(app, "operator")
    token = csrf_of(op.get("/actions/credit").get_data(as_text=True))
    r = op.post("/actions/credit", content_type="multipart/form-data", data=dict(
        csrf_token=token, how="file", amount="5", note="файл",
        file=(io.BytesIO("\ufeffA001\r\nA003\r\n\r\nA003\r\n".encode()), "cards.txt")))
    html = r.get_data(as_text=True)
    assert 'id="preview-cards">2<' in html, html
    confirm(op, html, "/actions/credit/confirm")
    assert balances(db) == [D("5.00"), D("0.00"), D("5.00"), D("0.00"), D("0.00")]
    unknown = op.post("/actions/credit", content_type="multipart/form-data", data=dict(
        csrf_token=token, how="file", amount="5", file=(io.BytesIO(b"A001\nZZZ9\n"), "cards.txt")))
    assert unknown.status_code == 400 and "ZZZ9" in unknown.get_data(as_text=True)


def test_zeroing_preview_and_confirm(app, db):
    for n in CARDS[:3]:
        db.register_operation(request(n, accrued="4.00"))
    from datetime import datetime, timedelta

    tomorrow = (datetime.now(db.settings.tz) + timedelta(days=1)).date()
    op = client(app, "operator")
    token = csrf_of(op.get("/actions/zero").get_data(as_text=True))
    r = op.post("/actions/zero", data=dict(csrf_token=token, inactive_since=f"{tomorrow:%d.%m.%Y}", note="год"))
    html = r.get_data(as_text=True)
    assert 'id="preview-cards">3<' in html and 'id="preview-amount">12,00<' in html
    assert balances(db)[:3] == [D("4.00")] * 3
    confirm(op, html, "/actions/zero/confirm")
    assert balances(db) == [D("0.00")] * 5


def test_a_viewer_cannot_run_or_cancel_an_action(app, db, caplog):
    caplog.set_level(logging.INFO, "kkmtransfer.audit")
    viewer = client(app, "viewer")
    assert "Начислить бонусы" not in viewer.get("/actions/").get_data(as_text=True)
    token = csrf_of(viewer.get("/actions/").get_data(as_text=True))
    assert viewer.get("/actions/credit").status_code == 403
    r = viewer.post("/actions/credit/confirm", data=dict(csrf_token=token, how="all", amount="100.00"))
    assert r.status_code == 403 and balances(db) == [D("0.00")] * 5
    assert audit_lines(caplog, operator="viewer", command="actions.credit", outcome="refused")


def test_an_unreachable_queue_is_one_line_and_changes_nothing(app, db, jobs):
    jobs.broken = True
    op = client(app, "operator")
    html = preview_credit(op, how="all", amount="1.00").get_data(as_text=True)
    r = confirm(op, html, "/actions/credit/confirm")
    page = op.get(r.headers["Location"]).get_data(as_text=True)
    assert "Очередь задач недоступна" in page and "Traceback" not in page
    assert balances(db) == [D("0.00")] * 5 and n_actions(db) == 0


def test_journal_rejects_are_listed_dismissed_and_retried(app, db, tmp_path, caplog):
    caplog.set_level(logging.INFO, "kkmtransfer.audit")
    path = journal(tmp_path, "k1.csv", line(number="1", card="NEW1", accrued="3.00"),
                   line(number="2", card="NEW2", accrued="4.00"), line(number="3", card="A001", accrued="1.00"))
    summary = JournalImport(db).import_file(path)
    assert summary.rejected == 2 and summary.applied == 1
    op = client(app, "operator")
    page = op.get("/journal/").get_data(as_text=True)
    assert 'id="rejects-total">2<' in page and "k1.csv:2" in page and "CardNotFound" in page
    ids = sorted(r["id"] for r in JournalImport(db).rejects())
    assert op.post(f"/journal/{ids[1]}/dismiss", data={"csrf_token": csrf_of(page)}).status_code == 302
    assert len(JournalImport(db).rejects()) == 2  # no reason, no dismissal
    r = op.post(f"/journal/{ids[1]}/dismiss", data={"csrf_token": csrf_of(page), "reason": "карта выдана по ошибке"})
    assert r.status_code == 302
    assert [r["id"] for r in JournalImport(db).rejects()] == [ids[0]]
    db.add_card_range(1, 1, "NEW", 0, None, issued=ISSUED)
    page = op.get("/journal/").get_data(as_text=True)
    assert op.post("/journal/retry", data={"csrf_token": csrf_of(page)}).status_code == 302
    assert JournalImport(db).rejects() == []
    assert db.card_info("NEW1").balances.bonus == D("3.00")
    with db.engine.connect() as conn:
        states = dict(conn.execute(select(journal_rejects.c.id, journal_rejects.c.status)).all())
    assert states == {ids[0]: "resolved", ids[1]: "dismissed"}
    assert audit_lines(caplog, operator="operator", command="journal.dismiss", outcome="done")
    from kkmtransfer.service_layer import audit

    assert [r.details["detail"] for r in audit.rows(db.engine, actor="operator") if r.action == "journal.dismiss"
            and r.details["outcome"] == "done"] == ["карта выдана по ошибке"]
    viewer = client(app, "viewer")
    assert viewer.post("/journal/retry", data={"csrf_token": csrf_of(viewer.get("/journal/").get_data(
        as_text=True))}).status_code == 403


# -- with the real worker -----------------------------------------------------------------------------
from .test_celery import client_app, redis_url, worker  # noqa: E402,F401  (a real Celery worker on Redis)


@pytest.mark.slow
def test_the_console_hands_an_action_to_the_celery_worker_and_shows_it_finish(db, worker, client_app):
    import time

    db.add_card_range(1, 40, "W", 3, None, issued=ISSUED)
    Operators(db).add("operator", "operator", PASSWORDS["operator"])
    sent = []

    def to_worker(name, kwargs):
        sent.append(client_app.send_task(name, kwargs=kwargs, queue=worker))

    app = create_app(db, SECRET, dispatch=to_worker)
    op = client(app, "operator")
    html = preview_credit(op, how="range", first="W001", last="W040", amount="3.00", note="worker").get_data(
        as_text=True)
    assert 'id="preview-cards">40<' in html
    where = confirm(op, html, "/actions/credit/confirm").headers["Location"]
    deadline = time.monotonic() + 60
    while 'data-status="done"' not in (page := op.get(where).get_data(as_text=True)):
        assert time.monotonic() < deadline, page
        assert "В очереди" in page or 'data-status="running"' in page
        time.sleep(0.3)
    assert "40 из 40 (100%)" in page.replace("\u00a0", " ")
    assert sent[0].get(timeout=30)["done"] == 40
    assert db.card_info("W017").balances.bonus == D("3.00")
