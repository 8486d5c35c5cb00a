"""The web console through Flask's test client, on SQLite and PostgreSQL: roles, CSRF, login throttle,
card search and page, commands, reports. The browser tests are in test_web_browser.py."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path

import pytest

from kkmtransfer.domain.model import CardStatus
from kkmtransfer.domain.operators import LOCK_TIME, MAX_FAILURES
from kkmtransfer.service_layer.operators import Operators
from kkmtransfer.web import create_app
from kkmtransfer.web.formatting import NBSP, money

from .helpers import ISSUED, request
from .web_helpers import PASSWORDS, SECRET, csrf_of, login, post_form

CARD, OTHER = "7770000001", "7770000002"


@pytest.fixture
def console(db):
    db.add_card_range(1, 3, "777", 7, "Иванов", issued=ISSUED)
    db.set_card_phone(CARD, "+7 (916) 123-45-67")
    ops = Operators(db)
    for role, password in PASSWORDS.items():
        ops.add(role, role, password)
    return create_app(db, SECRET)


@pytest.fixture
def as_viewer(console):
    c = console.test_client()
    assert login(c, "viewer", PASSWORDS["viewer"]).status_code == 302
    return c


@pytest.fixture
def as_operator(console):
    c = console.test_client()
    assert login(c, "operator", PASSWORDS["operator"]).status_code == 302
    return c


def audit_lines(caplog, **fields):
    want = [f"{k}={v}" for k, v in fields.items()]
    return [r.getMessage() for r in caplog.records
            if r.name == "kkmtransfer.audit" and all(w in r.getMessage().split() for w in want)]


# -- logging in -------------------------------------------------------------------------------
def test_pages_need_a_login_and_the_session_cookie_is_hardened(console):
    c = console.test_client()
    r = c.get(f"/cards/{CARD}")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    r = login(c, "admin", PASSWORDS["admin"])
    assert r.status_code == 302
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert c.get(f"/cards/{CARD}").status_code == 200

    tls = console.test_client()
    token = csrf_of(tls.get("/login", base_url="https://localhost").get_data(as_text=True))
    r = tls.post("/login", base_url="https://localhost",
                 data=dict(csrf_token=token, name="admin", password=PASSWORDS["admin"]),
                 headers={"Referer": "https://localhost/login"})
    assert r.status_code == 302, r.get_data(as_text=True)
    assert "Secure" in r.headers["Set-Cookie"]


def test_a_wrong_password_and_an_unknown_name_get_the_same_answer(console, caplog):
    caplog.set_level(logging.INFO, "kkmtransfer.audit")
    c = console.test_client()
    wrong = login(c, "operator", "not-the-password")
    unknown = login(c, "nobody", "not-the-password")
    assert wrong.status_code == unknown.status_code == 401
    assert "Неверное имя или пароль" in wrong.get_data(as_text=True)
    assert c.get("/").status_code == 302  # still not logged in
    assert audit_lines(caplog, operator="operator", command="login", outcome="failed")


def test_a_disabled_operator_loses_the_session_at_once(console, db):
    c = console.test_client()
    login(c, "operator", PASSWORDS["operator"])
    assert c.get("/").status_code == 200
    Operators(db).disable("operator")
    assert c.get("/").status_code == 302
    assert login(c, "operator", PASSWORDS["operator"]).status_code == 401


def test_ten_failed_logins_lock_the_name_for_fifteen_minutes(console, db, clock, caplog):
    caplog.set_level(logging.INFO, "kkmtransfer.audit")
    start = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
    clock.set(start)
    c = console.test_client()
    for i in range(MAX_FAILURES):
        assert login(c, "operator", f"wrong-{i}").status_code == 401, i
    # locked: even the right password is refused unchecked, with Retry-After
    r = login(c, "operator", PASSWORDS["operator"])
    assert r.status_code == 429
    assert 0 < int(r.headers["Retry-After"]) <= LOCK_TIME.total_seconds()
    assert "Повторите через 15 мин" in r.get_data(as_text=True)
    assert audit_lines(caplog, operator="operator", command="login", outcome="refused")
    # another name is not affected; an unknown name is throttled the same way
    assert login(c, "viewer", PASSWORDS["viewer"]).status_code == 302
    other = console.test_client()
    for i in range(MAX_FAILURES):
        login(other, "ghost", f"wrong-{i}")
    assert login(other, "ghost", "anything-1").status_code == 429
    # one second before the end still locked; at the end the right password works and the count restarts
    clock.set(start + LOCK_TIME - timedelta(seconds=1))
    assert login(console.test_client(), "operator", PASSWORDS["operator"]).status_code == 429
    clock.set(start + LOCK_TIME)
    assert login(console.test_client(), "operator", PASSWORDS["operator"]).status_code == 302
    for i in range(MAX_FAILURES - 1):
        assert login(console.test_client(), "operator", f"again-{i}").status_code == 401
    assert login(console.test_client(), "operator", PASSWORDS["operator"]).status_code == 302


def test_next_after_login_stays_inside_the_console(console):
    c = console.test_client()
    token = csrf_of(c.get("/login").get_data(as_text=True))
    r = c.post("/login", data=dict(csrf_token=token, name="viewer", password=PASSWORDS["viewer"],
                                   next="//evil.example/steal"))
    assert r.status_code == 302 and r.headers["Location"] == "/"
    c2 = console.test_client()
    token = csrf_of(c2.get("/login").get_data(as_text=True))
    r = c2.post("/login", data=dict(csrf_token=token, name="viewer", password=PASSWORDS["viewer"],
                                    next=f"/cards/{CARD}?page=2"))
    assert r.headers["Location"] == f"/cards/{CARD}?page=2"


# -- roles, CSRF, audit -------------------------------------------------------------------------
def test_a_viewer_reads_but_an_operators_command_is_refused_403_and_audited(as_viewer, db, caplog):
    caplog.set_level(logging.INFO, "kkmtransfer.audit")
    page = as_viewer.get(f"/cards/{CARD}")
    assert page.status_code == 200
    assert "Заблокировать" not in page.get_data(as_text=True)  # no button it could not use
    r = post_form(as_viewer, f"/cards/{CARD}", f"/cards/{CARD}/block")
    assert r.status_code == 403
    assert db.card_info(CARD).status is CardStatus.ACTIVE
    refused = audit_lines(caplog, operator="viewer", command="cards.block", outcome="refused")
    assert refused and f"target=number={CARD}" in refused[0]
    from kkmtransfer.service_layer import audit

    [row] = [r for r in audit.rows(db.engine, actor="viewer") if r.action == "cards.block"]
    assert row.object == f"number={CARD}" and row.details["outcome"] == "refused"
    assert row.details["via"] == "console"


def test_a_form_posted_without_its_csrf_token_is_refused(as_operator, db, caplog):
    caplog.set_level(logging.INFO, "kkmtransfer.audit")
    r = as_operator.post(f"/cards/{CARD}/block", data={})
    assert r.status_code == 400
    assert "CSRF" in r.get_data(as_text=True)
    r = as_operator.post(f"/cards/{CARD}/block", data={"csrf_token": "forged"})
    assert r.status_code == 400
    assert db.card_info(CARD).status is CardStatus.ACTIVE
    assert audit_lines(caplog, operator="operator", outcome="refused")
    # and the same form with its token goes through
    assert post_form(as_operator, f"/cards/{CARD}", f"/cards/{CARD}/block").status_code == 302
    assert db.card_info(CARD).status is CardStatus.BLOCKED
    from kkmtransfer.service_layer import audit

    actions = [(r.action, r.object) for r in audit.rows(db.engine, actor="operator")]
    assert ("cards.block", CARD) in actions  # recorded by the use case, with the operator as the actor


def test_logging_out_needs_the_token_too(as_operator):
    assert as_operator.post("/logout", data={}).status_code == 400
    assert as_operator.get("/").status_code == 200
    assert post_form(as_operator, "/", "/logout").status_code == 302
    assert as_operator.get("/").status_code == 302


# -- cards ------------------------------------------------------------------------------------
@pytest.mark.parametrize("typed", ["+7 (916) 123-45-67", "8 916 123 45 67", "9161234567", "007-916-1234567"])
def test_search_finds_a_card_by_its_phone_however_typed(as_viewer, typed):
    r = as_viewer.get("/cards/", query_string={"q": typed})
    assert r.status_code == 302 and r.headers["Location"].endswith(f"/cards/{CARD}")


def test_search_by_number_and_what_is_not_found(as_viewer):
    assert as_viewer.get("/cards/", query_string={"q": OTHER}).headers["Location"].endswith(f"/cards/{OTHER}")
    r = as_viewer.get("/cards/", query_string={"q": "9999999999"})
    assert r.status_code == 404 and "не найдена" in r.get_data(as_text=True)
    assert as_viewer.get("/cards/", query_string={"q": "abc"}).status_code == 404
    assert as_viewer.get("/cards/nope").status_code == 404


def test_the_card_page_shows_the_balances_of_card_info_and_pages_the_history(as_viewer, db):
    t0 = datetime.now(timezone.utc) - timedelta(hours=3)
    for i in range(120):
        db.register_operation(request(CARD, receipt_sum="1000.00", accrued="10.50", time=t0 + timedelta(seconds=i),
                                      receipt_number=f"R{i:03d}", accumulation_delta=D("1000.00"),
                                      receipt_count_delta=1))
    view = db.card_info(CARD)
    assert view.balances.bonus == D("1260.00")
    html = as_viewer.get(f"/cards/{CARD}").get_data(as_text=True)
    assert f'id="bonus-balance">{money(view.balances.bonus)}<' in html
    assert money(view.balances.bonus) == f"1{NBSP}260,00"
    assert f'id="accumulation">{money(D("120000.00"))}<' in html
    assert "Страница 1 из 3" in html
    assert "R119" in html and "R070" in html and "R069" not in html  # newest first, 50 a page
    last = as_viewer.get(f"/cards/{CARD}?page=3").get_data(as_text=True)
    assert "R019" in last and "R000" in last and "R020" not in last and "Страница 3 из 3" in last
    assert "Страница 3 из 3" in as_viewer.get(f"/cards/{CARD}?page=99").get_data(as_text=True)


def test_the_expiry_schedule_says_what_burns_when(console, as_viewer, db):
    day = datetime.now(timezone.utc).astimezone(db.settings.tz).date()
    db.add_promotion("SHORT", "Короткая", delay_days=0, lifetime_days=10)
    db.register_operation(request(CARD, accrued="30.00", promotion_code="SHORT"))
    db.register_operation(request(CARD, accrued="5.00"))  # never burns
    html = as_viewer.get(f"/cards/{CARD}").get_data(as_text=True)
    schedule = html.split('id="expiry"')[1].split("</table>")[0]
    burns = [d for d in (day + timedelta(days=n) for n in range(0, 12)) if f"{d:%d.%m.%Y}" in schedule]
    assert len(burns) == 1 and "30,00" in schedule and "5,00" not in schedule


def test_an_operator_annuls_a_receipt_from_its_history_line_once(as_operator, db, caplog):
    caplog.set_level(logging.INFO, "kkmtransfer.audit")
    sale = request(CARD, accrued="40.00", receipt_number="A-1")
    db.register_operation(sale)
    db.register_operation(request(CARD, accrued="2.00"))
    page = as_operator.get(f"/cards/{CARD}").get_data(as_text=True)
    action = f"/cards/{CARD}/annul/{sale.operation_id}"
    assert f'action="{action}"' in page
    r = post_form(as_operator, f"/cards/{CARD}", action)
    assert r.status_code == 302
    assert db.card_info(CARD).balances.bonus == D("2.00")
    shown = as_operator.get(f"/cards/{CARD}").get_data(as_text=True)
    assert "Бонусы чека аннулированы" in shown and "аннулирован</span>" in shown
    assert f'action="{action}"' not in shown  # no second button
    post_form(as_operator, f"/cards/{CARD}", action)  # posted again anyway: nothing changes
    assert db.card_info(CARD).balances.bonus == D("2.00")
    assert "уже были аннулированы" in as_operator.get(f"/cards/{CARD}").get_data(as_text=True)
    assert audit_lines(caplog, operator="operator", command="receipts.annul", outcome="done")
    # a sale of another card cannot be annulled through this card's page
    other = request(OTHER, accrued="7.00")
    db.register_operation(other)
    assert post_form(as_operator, f"/cards/{CARD}", f"/cards/{CARD}/annul/{other.operation_id}").status_code == 404
    assert db.card_info(OTHER).balances.bonus == D("7.00")


def test_an_operator_blocks_and_unblocks_a_card(as_operator, db):
    assert post_form(as_operator, f"/cards/{CARD}", f"/cards/{CARD}/block").status_code == 302
    assert db.card_info(CARD).status is CardStatus.BLOCKED
    assert "Заблокирована" in as_operator.get(f"/cards/{CARD}").get_data(as_text=True)
    assert post_form(as_operator, f"/cards/{CARD}", f"/cards/{CARD}/unblock").status_code == 302
    assert db.card_info(CARD).status is CardStatus.ACTIVE


# -- dashboard and reports ------------------------------------------------------------------------
def _history(db):
    """Sales, a return and an annulment over three days, some with bonuses that start later."""
    tz = db.settings.tz
    base = datetime.now(timezone.utc).astimezone(tz).replace(hour=12, minute=0, second=0, microsecond=0)
    db.add_promotion("LATER", "Позже", delay_days=1, lifetime_days=30)
    sales = []
    for n, card in enumerate((CARD, OTHER, CARD)):
        at = base - timedelta(days=2 - n)
        sale = request(card, receipt_sum="500.00", accrued="25.00", time=at.astimezone(timezone.utc),
                       receipt_number=f"S{n}")
        db.register_operation(sale)
        sales.append(sale)
        db.register_operation(request(card, receipt_sum="100.00", accrued="3.00", spent="5.00",
                                      time=(at + timedelta(hours=1)).astimezone(timezone.utc),
                                      promotion_code="LATER"))
    db.register_operation(request(CARD, kind="Return", receipt_sum="100.00", accrued="5.00",
                                  original_operation_id=sales[0].operation_id,
                                  time=(base - timedelta(days=1)).astimezone(timezone.utc)))
    db.annul_receipt(sales[1].operation_id)
    return base.date()


def test_the_dashboard_turnovers_add_up_to_the_balances_report(as_viewer, db):
    from kkmtransfer.service_layer import console as console_service
    from kkmtransfer.service_layer.reports import TURNOVERS, Reports

    today = _history(db)
    first, last = today - timedelta(days=3), today + timedelta(days=1)
    dash = console_service.dashboard(db, first, last)
    report = Reports(db).balances(first, last).totals()["bonus"]
    totals = dash.totals()
    for name in TURNOVERS:
        assert getattr(totals, name) == getattr(report, name), name
    assert totals.accrued > 0 and totals.spent < 0 and totals.returned < 0
    live = sum((db.card_info(n).balances.bonus for n in (CARD, OTHER, "7770000003")), D("0.00"))
    assert dash.liability == live
    html = as_viewer.get("/", query_string={"from": first.isoformat(), "to": last.isoformat()}).get_data(as_text=True)
    assert 'id="turnovers-chart"' in html and 'id="turnovers-data"' in html
    assert f'id="liability">{money(live)}<' in html
    assert as_viewer.get("/", query_string={"from": "2026-02-30"}).status_code == 400


def test_the_balances_csv_is_the_file_the_cli_writes(as_viewer, db, database_url, tmp_path):
    today = _history(db)
    first, last = today - timedelta(days=2), today
    out = tmp_path / "cli.csv"
    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=database_url)
    kkm = str(Path(sys.executable).parent / "kkmtransfer")
    subprocess.run([kkm, "report", "balances", "--from", first.isoformat(), "--to", last.isoformat(), "--csv",
                    str(out)], check=True, capture_output=True, env=env, timeout=60)
    r = as_viewer.get("/reports/balances.csv", query_string={"from": first.isoformat(), "to": last.isoformat()})
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert "attachment" in r.headers["Content-Disposition"]
    assert r.data == out.read_bytes()
    assert r.data.count(b"\n") > 4
    page = as_viewer.get("/reports/balances", query_string={"from": first.isoformat(), "to": last.isoformat()})
    assert page.status_code == 200 and CARD in page.get_data(as_text=True)


# -- production entry point ----------------------------------------------------------------------
def test_the_production_console_refuses_to_start_without_a_secret_key(database_url):
    env = {k: v for k, v in os.environ.items() if k != "KKMTRANSFER_SECRET_KEY"}
    env["KKMTRANSFER_DATABASE_URL"] = database_url
    proc = subprocess.run([sys.executable, "-c", "import kkmtransfer.web.wsgi"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode != 0 and "KKMTRANSFER_SECRET_KEY must be set" in proc.stderr
    env["KKMTRANSFER_SECRET_KEY"] = "k" * 40
    proc = subprocess.run([sys.executable, "-c", "from kkmtransfer.web.wsgi import application; print('ok')"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_the_vendored_chart_library_is_the_pinned_file():
    import hashlib

    static = Path(__file__).resolve().parent.parent / "kkmtransfer" / "web" / "static"
    digest = hashlib.sha256((static / "chart-4.6.1.umd.min.js").read_bytes()).hexdigest()
    assert digest in (static / "VENDORED.txt").read_text()
    assert "MIT" in (static / "chart-4.6.1.LICENSE.txt").read_text()
    template = (static.parent / "templates" / "dashboard.html").read_text()
    assert "chart-4.6.1.umd.min.js" in template and "http" not in template


def test_the_operations_journal_with_the_clis_filters(as_viewer, db):
    _history(db)
    from kkmtransfer.service_layer.reports import Reports

    every = list(Reports(db).operations())
    html = as_viewer.get("/reports/operations").get_data(as_text=True)
    assert html.count("<tr><td data-sort=") == len(every)
    sales = as_viewer.get("/reports/operations", query_string={"card": CARD, "kind": "Sale"}).get_data(as_text=True)
    want = [r for r in every if r["card"] == CARD and r["kind"] == "Sale"]
    assert sales.count("<tr><td data-sort=") == len(want) == 4
    assert as_viewer.get("/reports/operations", query_string={"from": "31.12.2026", "to": "01.01.2026"}
                         ).status_code == 400


def test_an_admin_manages_operators_and_an_operator_may_not(console, db, caplog):
    caplog.set_level(logging.INFO, "kkmtransfer.audit")
    op = console.test_client()
    login(op, "operator", PASSWORDS["operator"])
    assert op.get("/operators/").status_code == 403
    r = post_form(op, "/", "/operators/", name="mallory", role="admin", password="mallory-pw", password2="mallory-pw")
    assert r.status_code == 403 and Operators(db).get("mallory") is None
    assert audit_lines(caplog, operator="operator", command="operators.add", outcome="refused")

    admin = console.test_client()
    login(admin, "admin", PASSWORDS["admin"])
    assert "Операторы" in admin.get("/").get_data(as_text=True)
    mismatch = post_form(admin, "/operators/", "/operators/", name="olga", role="viewer", password="olga-pass-1",
                         password2="olga-pass-2")
    assert mismatch.status_code == 302 and Operators(db).get("olga") is None
    post_form(admin, "/operators/", "/operators/", name="olga", role="viewer", password="olga-pass-1",
              password2="olga-pass-1")
    assert Operators(db).get("olga").role.value == "viewer"
    assert login(console.test_client(), "olga", "olga-pass-1").status_code == 302
    post_form(admin, "/operators/", "/operators/olga/disable")
    assert login(console.test_client(), "olga", "olga-pass-1").status_code == 401
    assert audit_lines(caplog, operator="admin", command="operators.disable", outcome="done")
    post_form(admin, "/operators/", "/operators/admin/disable")  # not oneself
    assert not Operators(db).get("admin").disabled


def test_a_password_change_ends_the_operators_other_sessions(console, db, caplog):
    caplog.set_level(logging.INFO, "kkmtransfer.audit")
    old = console.test_client()
    assert login(old, "operator", PASSWORDS["operator"]).status_code == 302
    assert old.get("/").status_code == 200
    admin = console.test_client()
    login(admin, "admin", PASSWORDS["admin"])
    r = post_form(admin, "/operators/", "/operators/", name="operator", role="operator", password="brand-new-pass",
                  password2="brand-new-pass")
    assert r.status_code == 302
    r = old.get("/")
    assert r.status_code == 302 and "/login" in r.headers["Location"]  # the old session is over
    assert old.get("/cards/").status_code == 302
    assert login(console.test_client(), "operator", "brand-new-pass").status_code == 302
    # the admin changing its own password keeps its own session, and ends its others
    other = console.test_client()
    login(other, "admin", PASSWORDS["admin"])
    post_form(admin, "/operators/", "/operators/", name="admin", role="admin", password="admin-new-pass",
              password2="admin-new-pass")
    assert admin.get("/").status_code == 200
    assert other.get("/").status_code == 302
    assert audit_lines(caplog, operator="admin", command="operators.add", outcome="done")
