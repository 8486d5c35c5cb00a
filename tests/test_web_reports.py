"""The console's audit page, its server-side CSV of every table (the CLI's files and numbers), journal
uploads processed on the worker, promotions and the bonus program (admins only), the gift-certificate
liability on the dashboard — through Flask's test client on SQLite and PostgreSQL."""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path

import pytest

from kkmtransfer.console_tasks import IMPORT_TASK
from kkmtransfer.service_layer import audit
from kkmtransfer.service_layer.journal import JournalImport
from kkmtransfer.service_layer.operators import Operators
from kkmtransfer.web import create_app

from .helpers import new_id, request
from .test_journal import line
from .test_web import audit_lines
from .test_web_actions import Dispatcher
from .web_helpers import PASSWORDS, SECRET, csrf_of, login, post_form

CARD = "7770000001"


@pytest.fixture
def jobs(db):
    return Dispatcher(db)


@pytest.fixture
def inbox(tmp_path):
    return tmp_path / "inbox"


@pytest.fixture
def app(db, jobs, inbox):
    db.add_card_range(1, 5, "777", 7, "Иванов")
    for role, password in PASSWORDS.items():
        Operators(db).add(role, role, password)
    return create_app(db, SECRET, dispatch=jobs, config={"INBOX_DIR": str(inbox), "JOURNAL_MAX_BYTES": 4096})


def client(app, role):
    c = app.test_client()
    assert login(c, role, PASSWORDS[role]).status_code == 302
    return c


def cli(database_url, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "kkmtransfer"), *args], check=True, capture_output=True,
                          text=True, env=dict(os.environ, KKMTRANSFER_DATABASE_URL=database_url), timeout=120)


# -- the audit trail ---------------------------------------------------------------------------------
def test_the_audit_page_lists_what_was_done_and_filters_it(app, db):
    op = client(app, "operator")
    post_form(op, f"/cards/{CARD}", f"/cards/{CARD}/block")
    viewer = client(app, "viewer")
    assert post_form(viewer, f"/cards/{CARD}", f"/cards/{CARD}/unblock").status_code == 403
    html = viewer.get("/reports/audit").get_data(as_text=True)
    assert 'data-action="cards.block"' in html and 'data-action="cards.unblock"' in html
    assert "отказано" in html and "Журнал аудита" in html
    only = viewer.get("/reports/audit", query_string={"actor": "viewer", "action": "cards.unblock"}).get_data(
        as_text=True)
    assert only.count("<tr data-action=") == 1 and "отказано" in only
    assert 'data-action="login"' not in only
    # the newest first by default, the oldest first on request
    rows = [r for r in audit.rows(db.engine)]
    first_row = viewer.get("/reports/audit", query_string={"order": "asc"}).get_data(as_text=True)
    assert first_row.index(f'data-action="{rows[0].action}"') < first_row.index('data-action="cards.unblock"')
    assert viewer.get("/reports/audit", query_string={"from": "02.01.2026", "to": "01.01.2026"}).status_code == 400


def test_the_audit_pages_by_a_hundred(app, db):
    for i in range(130):
        audit.record_now(db.engine, "robot", "test.step", str(i))
    c = client(app, "viewer")
    one = c.get("/reports/audit", query_string={"actor": "robot"}).get_data(as_text=True)
    assert one.count("<tr data-action=") == 100 and 'rel="next"' in one
    two = c.get("/reports/audit", query_string={"actor": "robot", "page": 2}).get_data(as_text=True)
    assert two.count("<tr data-action=") == 30 and 'rel="next"' not in two
    csv = c.get("/reports/audit.csv", query_string={"actor": "robot"}).get_data(as_text=True).splitlines()
    assert csv[0] == "at;actor;action;object;details" and len(csv) == 131  # every row, not one page


def test_the_audit_csv_is_the_clis_file(app, db, database_url, tmp_path):
    op = client(app, "operator")
    post_form(op, f"/cards/{CARD}", f"/cards/{CARD}/block")
    r = client(app, "viewer").get("/reports/audit.csv", query_string={"actor": "operator"})
    assert r.mimetype == "text/csv" and "audit.csv" in r.headers["Content-Disposition"]
    out = tmp_path / "audit.csv"
    cli(database_url, "report", "audit", "--actor", "operator", "--csv", str(out))
    assert r.data == out.read_bytes()
    assert b";cards.block;" in r.data


# -- CSV of every table ------------------------------------------------------------------------------
def test_the_operations_csv_is_the_clis_file_with_machine_readable_numbers(app, db, database_url, tmp_path):
    t0 = datetime.now(timezone.utc) - timedelta(hours=2)
    for i in range(3):
        db.register_operation(request(CARD, receipt_sum="12345.00", accrued="1234.56", time=t0 + timedelta(minutes=i),
                                      receipt_number=f"R{i}"))
    db.register_operation(request("7770000002", accrued="1.00"))
    r = client(app, "viewer").get("/reports/operations.csv", query_string={"card": CARD, "kind": "Sale"})
    assert r.status_code == 200
    out = tmp_path / "ops.csv"
    cli(database_url, "report", "operations", "--card", CARD, "--kind", "Sale", "--csv", str(out))
    assert r.data == out.read_bytes()
    lines = r.get_data(as_text=True).splitlines()
    assert len(lines) == 4 and lines[1].split(";")[6] == "1234.56"  # not "1 234,56"
    html = client(app, "viewer").get("/reports/operations", query_string={"card": CARD}).get_data(as_text=True)
    assert "/reports/operations.csv?card=" + CARD in html
    assert client(app, "viewer").get("/reports/operations.csv", query_string={"kind": "Nope"}).status_code == 400


def test_the_card_history_csv_has_every_page(app, db):
    t0 = datetime.now(timezone.utc) - timedelta(hours=3)
    for i in range(120):
        db.register_operation(request(CARD, receipt_sum="1000.00", accrued="10.50", time=t0 + timedelta(seconds=i),
                                      receipt_number=f"R{i:03d}"))
    c = client(app, "viewer")
    assert f"/cards/{CARD}/history.csv" in c.get(f"/cards/{CARD}").get_data(as_text=True)
    lines = c.get(f"/cards/{CARD}/history.csv").get_data(as_text=True).splitlines()
    assert lines[0].startswith("time;operation_id;kind") and len(lines) == 121
    assert sum(D(l.split(";")[8]) for l in lines[1:]) == db.card_info(CARD).balances.bonus == D("1260.00")
    assert c.get("/cards/nope/history.csv").status_code == 404


def test_the_actions_and_rejects_csv(app, db, jobs, tmp_path):
    from .test_web_actions import confirm, preview_credit

    op = client(app, "operator")
    confirm(op, preview_credit(op, how="range", first="7770000001", last="7770000003", amount="1 000,50").get_data(
        as_text=True), "/actions/credit/confirm")
    lines = op.get("/actions/actions.csv").get_data(as_text=True).splitlines()
    assert lines[0].split(";")[:4] == ["action_id", "created_at", "kind", "amount"]
    assert lines[1].split(";")[2:4] == ["credit", "1000.50"] and lines[1].split(";")[6:9] == ["done", "3", "3"]
    from .test_journal import journal

    JournalImport(db).import_file(journal(tmp_path, "k9.csv", line(number="1", card="NOPE", accrued="3.00")))
    rejects = op.get("/journal/rejects.csv").get_data(as_text=True).splitlines()
    assert len(rejects) == 2 and ";pending;k9.csv;2;Client.CardNotFound;" in rejects[1]


# -- journal uploads -----------------------------------------------------------------------------------
def _journal_bytes(*lines) -> bytes:
    from kkmtransfer.adapters.journal_file import HEADER

    return (HEADER + "\n" + "\n".join(lines) + "\n").encode()


def upload(c, name, data):
    token = csrf_of(c.get("/journal/").get_data(as_text=True))
    return c.post("/journal/upload", content_type="multipart/form-data",
                  data=dict(csrf_token=token, file=(io.BytesIO(data), name)))


def test_an_uploaded_journal_is_imported_on_the_worker_and_listed(app, db, jobs, inbox, caplog):
    caplog.set_level(logging.INFO, "kkmtransfer.audit")
    op = client(app, "operator")
    data = _journal_bytes(line(number="1", card=CARD, accrued="5.00"), line(number="2", card="NOPE", accrued="1.00"))
    r = upload(op, "kkm 12 (day).csv", data)
    assert r.status_code == 303
    assert [name for name, _ in jobs.sent] == [IMPORT_TASK]  # handed to the worker, not imported in the request
    assert jobs.sent[0][1]["inbox"] == str(inbox)
    assert db.card_info(CARD).balances.bonus == D("5.00")
    page = op.get("/journal/").get_data(as_text=True)
    row = page.split('data-file="kkm_12__day_.csv"')[1].split("</tr>")[0]
    assert 'data-state="done"' in row and "Загружен" in row and ">2<" in row  # rows
    assert (inbox / "done" / "kkm_12__day_.csv").read_bytes() == data
    assert 'id="rejects-total">1<' in page
    files = op.get("/journal/files.csv").get_data(as_text=True).splitlines()
    assert files[1].startswith("kkm_12__day_.csv;done;") and files[1].split(";")[3:9] == ["2", "2", "1", "0", "1", "1"]
    assert files[1].split(";")[9] == "operator"
    assert audit_lines(caplog, operator="operator", command="journal.import", outcome="queued")
    assert audit_lines(caplog, operator="operator", command="journal.import", outcome="done")
    # the same name again is kept apart; the rows already applied are not applied twice
    upload(op, "kkm 12 (day).csv", data)
    assert db.card_info(CARD).balances.bonus == D("5.00")
    assert op.get("/journal/files.csv").get_data(as_text=True).count(";done;") == 2


def test_a_journal_waiting_and_in_progress_is_shown_with_its_progress(app, db, jobs, inbox):
    op = client(app, "operator")
    inbox.mkdir(parents=True)
    (inbox / "dropped.csv").write_bytes(_journal_bytes(line(number="1", card=CARD, accrued="1.00")))
    jobs.broken = True  # the queue is down: the upload stays in the inbox, queued
    r = upload(op, "k1.csv", _journal_bytes(line(number="2", card=CARD, accrued="2.00")))
    page = op.get(r.headers["Location"]).get_data(as_text=True)
    assert "при следующем обходе папки" in page
    assert 'data-file="dropped.csv" data-state="waiting"' in page and 'data-file="k1.csv" data-state="queued"' in page
    assert '<meta http-equiv="refresh"' in page  # the page follows the work
    jobs.broken = False
    from kkmtransfer.console_tasks import run_import

    run_import(db, "beat", str(inbox))
    page = op.get("/journal/").get_data(as_text=True)
    assert 'data-file="k1.csv" data-state="done"' in page and 'data-file="dropped.csv" data-state="done"' in page
    assert '<meta http-equiv="refresh"' not in page
    assert db.card_info(CARD).balances.bonus == D("3.00")


def test_what_may_not_be_uploaded(app, db, jobs, caplog):
    caplog.set_level(logging.INFO, "kkmtransfer.audit")
    viewer = client(app, "viewer")
    assert "journal-file" not in viewer.get("/journal/").get_data(as_text=True)
    assert upload(viewer, "k.csv", _journal_bytes()).status_code == 403
    assert audit_lines(caplog, operator="viewer", command="journal.import", outcome="refused")
    op = client(app, "operator")
    too_big = upload(op, "big.csv", b"x" * 5000)  # JOURNAL_MAX_BYTES 4096
    assert "больше" in op.get(too_big.headers["Location"]).get_data(as_text=True)
    upload(op, "notes.txt", b"hello")
    assert "расширением .csv" in op.get("/journal/").get_data(as_text=True)
    assert jobs.sent == []
    assert op.post("/journal/upload", data={"file": (io.BytesIO(b"a"), "k.csv")},
                   content_type="multipart/form-data").status_code == 400  # no CSRF token


def test_a_file_that_cannot_be_read_is_listed_as_failed(app, db, inbox):
    op = client(app, "operator")
    upload(op, "broken.csv", b"not;a;journal\n")
    page = op.get("/journal/").get_data(as_text=True)
    assert 'data-file="broken.csv" data-state="failed"' in page and "Не прочитан" in page
    assert (inbox / "failed" / "broken.csv").exists()


# -- promotions and the bonus program ------------------------------------------------------------------
def test_an_admin_manages_promotions_and_the_program_and_each_change_is_audited(app, db):
    admin = client(app, "admin")
    page = admin.get("/program/")
    assert page.status_code == 200 and "Бонусная программа" in page.get_data(as_text=True)
    assert post_form(admin, "/program/", "/program/promotions", code="SPRING", name="Весна", delay_days="1",
                     lifetime_days="30").status_code == 302
    [p] = db.list_promotions()
    assert (p["code"], p["delay_days"], p["lifetime_days"]) == ("SPRING", 1, 30)
    post_form(admin, "/program/", "/program/promotions/SPRING/percent", accrual_percent="7,5")
    assert db.list_promotions()[0]["accrual_percent"] == D("7.50")
    post_form(admin, "/program/", "/program/promotions/SPRING/close")
    assert db.list_promotions()[0]["closed_at"] is not None
    post_form(admin, "/program/", "/program/set", accrual_percent="4", tiers="10000:6; 20 000:8", rounding="whole")
    from kkmtransfer.service_layer.program import ProgramService

    now = ProgramService(db).in_force()
    assert now.accrual_percent == D("4") and now.tiers == ((D("10000"), D("6")), (D("20000"), D("8")))
    assert now.rounding == "whole"
    post_form(admin, "/program/", "/program/group", group="TOBACCO", how="excluded")
    assert ProgramService(db).in_force().groups["TOBACCO"].excluded
    shown = admin.get("/program/").get_data(as_text=True)
    assert 'data-promotion="SPRING"' in shown and "закрыта" in shown and "TOBACCO" in shown
    done = [(r.actor, r.action, r.object) for r in audit.rows(db.engine, actor="admin")]
    assert ("admin", "promotions.add", "SPRING") in done and ("admin", "promotions.close", "SPRING") in done
    assert ("admin", "program.promotion", "SPRING") in done
    assert sum(1 for _, a, _ in done if a == "program.change") == 2
    # a bad value: one line, nothing changed, recorded as failed
    post_form(admin, "/program/", "/program/set", accrual_percent="150")
    assert "Не выполнено" in admin.get("/program/").get_data(as_text=True)
    assert ProgramService(db).in_force().accrual_percent == D("4")
    assert [r.details.get("outcome") for r in audit.rows(db.engine, actor="admin", action="program.change")
            if r.details.get("via") == "console"] == ["failed"]


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_promotions_and_the_program_are_for_admins_only(app, db, role, caplog):
    caplog.set_level(logging.INFO, "kkmtransfer.audit")
    c = client(app, role)
    assert c.get("/program/").status_code == 403
    assert "/program/" not in c.get("/").get_data(as_text=True)
    r = post_form(c, "/", "/program/promotions", code="X", name="X")
    assert r.status_code == 403 and db.list_promotions() == []
    assert post_form(c, "/", "/program/set", accrual_percent="9").status_code == 403
    assert audit_lines(caplog, operator=role, command="promotions.add", outcome="refused")
    assert audit_lines(caplog, operator=role, command="program.change", outcome="refused")


# -- the dashboard ------------------------------------------------------------------------------------
def test_the_dashboard_shows_the_gift_certificate_liability(app, db):
    from kkmtransfer.domain.certificates import CertificateOperationRequest
    from kkmtransfer.service_layer.certificates import CertificateService
    from kkmtransfer.web.formatting import money

    certs = CertificateService(db)
    certs.add_range(1, 3, D("1500.00"), valid_days=30)
    now = datetime.now(timezone.utc)
    for n in ("1", "2"):
        certs.register(CertificateOperationRequest.build(operation_id=new_id(), number=n, kkm="K1", operation_time=now,
                                                         kind="Sell", amount=D("1500.00")))
    liability = certs.report(now.date(), now.date()).liability
    assert liability == D("3000.00")
    html = client(app, "viewer").get("/").get_data(as_text=True)
    assert f'id="certificate-liability">{money(liability)}<' in html
