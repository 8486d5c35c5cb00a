"""The console in a real browser: Debian's chromium driven by Playwright, against the console mounted at
/admin beside SOAP on one HTTP server (as `kkmtransfer serve` runs it), on SQLite and PostgreSQL.

Without /usr/bin/chromium these tests are skipped, except with CI=true, where they fail (.ci/run
installs it). Playwright never downloads a browser here. The sqlite run saves the screenshots shown in
docs/console.md into docs/console/.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from kkmtransfer.service_layer.operators import Operators
from kkmtransfer.service_layer.services import BillingService

from .conftest import IN_CI, PASSWORD, USER, zeep_client
from .helpers import ISSUED, op_dict, request
from .web_helpers import PASSWORDS, SECRET

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "console"
CARD, PHONE = "7770000001", "+7 (916) 123-45-67"
DESKTOP, TABLET = dict(width=1280, height=800), dict(width=768, height=1024)


@pytest.fixture(scope="session")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing and CI=true: apt-get install -y chromium", pytrace=False)
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class BackgroundJobs:
    """Stands for the Celery worker (tests/test_web_actions.py drives a real one): runs the job the
    console hands over in a thread of its own, after the request has answered, as the worker would."""

    def __init__(self, billing):
        self.billing = billing

    def __call__(self, name, kwargs):
        from kkmtransfer.console_tasks import JOBS

        threading.Timer(0.5, JOBS[name], args=(self.billing,), kwargs=kwargs).start()


@pytest.fixture(scope="session")
def site(engine, settings, clock, tmp_path_factory):
    """SOAP at /KKMTransfer and the console at /admin on one threaded server; yields its base URL."""
    from kkmtransfer.soap.devserver import make_server
    from kkmtransfer.soap.http import KKMTransferApp
    from kkmtransfer.web import create_app, mount

    billing = BillingService(engine, settings, clock)
    console = create_app(billing, SECRET, dispatch=BackgroundJobs(billing),
                         config={"INBOX_DIR": str(tmp_path_factory.mktemp("inbox"))})
    httpd = make_server("127.0.0.1", 0, mount(KKMTransferApp(billing, settings), console))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def shop(db, site):
    """Cards, a register user, operators; a few receipts over SOAP."""
    db.add_card_range(1, 12, "777", 7, "Петров Иван", issued=ISSUED)
    db.set_card_phone(CARD, PHONE)
    db.add_user(USER, PASSWORD)
    ops = Operators(db)
    for role, password in PASSWORDS.items():
        ops.add(role, role, password)
    soap = zeep_client(site + "/KKMTransfer")
    now = datetime.now(timezone.utc)
    sales = []
    for n in range(8):
        op = op_dict(CARD if n % 2 == 0 else f"77700000{n + 2:02d}", receipt_sum=f"{1000 + 137 * n}.00",
                     accrued=f"{50 + n}.25", time=now - timedelta(days=7 - n, minutes=5), ReceiptNumber=f"Ч-{n:03d}")
        soap.service.RegisterOperation(Operation=op)
        sales.append(op)
    soap.service.RegisterOperation(Operation=op_dict(CARD, receipt_sum="300.00", spent="20.00",
                                                     time=now - timedelta(hours=2), ReceiptNumber="Ч-100"))
    return dict(soap=soap, sales=sales, billing=db)


@pytest.fixture
def page(browser, site, database_url):
    context = browser.new_context(viewport=DESKTOP, locale="ru-RU", base_url=site)
    pg = context.new_page()
    pg.errors = []
    pg.on("console", lambda m: pg.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(f"pageerror: {e}"))
    pg.shots = database_url.startswith("sqlite")
    yield pg
    context.close()


def shot(pg, name: str) -> None:
    if pg.shots:
        SHOTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def log_in(pg, name: str = "operator", *, keyboard: bool = False) -> None:
    pg.goto("/admin/")
    assert "/admin/login" in pg.url
    if keyboard:  # only the keyboard: the name field has the focus, Tab to the password, Enter
        # autofocus is applied after the page loads: keys typed before it are lost (seen: "rator")
        pg.wait_for_function("document.activeElement && document.activeElement.id === 'name'")
        pg.keyboard.type(name)
        pg.keyboard.press("Tab")
        pg.keyboard.type(PASSWORDS[name])
        pg.keyboard.press("Enter")
    else:
        pg.get_by_label("Имя оператора").fill(name)
        pg.get_by_label("Пароль").fill(PASSWORDS[name])
        pg.get_by_role("button", name="Войти").click()
    # the dashboard itself: the login page's own address ends in "?next=/admin/", which "**/admin/" matches
    pg.wait_for_url(lambda url: urlsplit(url).path.endswith("/admin/"))


def money_text(text: str) -> D:
    return D(text.replace("\u00a0", "").replace(" ", "").replace(",", "."))


def test_log_in_find_a_card_by_phone_and_see_the_balance_soap_gives(page, shop):
    page.goto("/admin/login")
    shot(page, "login")
    log_in(page)
    page.get_by_role("link", name="Карты").click()
    page.get_by_label("Номер карты или телефон").fill("8 916 123-45-67")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/admin/cards/{CARD}")
    info = shop["soap"].service.GetCardInfo(CARD)
    assert info.BonusBalance > 0
    assert money_text(page.locator("#bonus-balance").inner_text()) == info.BonusBalance
    assert money_text(page.locator("#accumulation").inner_text()) == info.Accumulation
    assert int(page.locator("#receipt-count").inner_text().replace("\u00a0", "")) == info.ReceiptCount
    assert page.locator("#history tbody tr").count() == 5
    shot(page, "card")
    assert page.errors == []


def test_annul_a_receipt_from_the_history_in_the_browser(page, shop):
    log_in(page)
    page.goto(f"/admin/cards/{CARD}")
    before = shop["soap"].service.GetCardInfo(CARD).BonusBalance
    sale = shop["sales"][0]
    row = page.locator(f'tr[data-operation="{sale["OperationId"]}"]')
    page.once("dialog", lambda dialog: dialog.accept())  # "Аннулировать бонусы чека …?"
    row.get_by_role("button", name="Аннулировать бонусы").click()
    page.wait_for_selector(".flash.ok")
    after = shop["soap"].service.GetCardInfo(CARD).BonusBalance
    assert after == before - sale["BonusAccrued"]
    assert money_text(page.locator("#bonus-balance").inner_text()) == after
    assert page.locator(f'tr[data-operation="{sale["OperationId"]}"] button').count() == 0
    assert page.errors == []


def test_a_dismissed_confirmation_changes_nothing(page, shop):
    log_in(page)
    page.goto(f"/admin/cards/{CARD}")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Заблокировать").click()
    page.wait_for_timeout(300)
    assert shop["soap"].service.GetCardInfo(CARD).Status == "Active"


def test_the_dashboard_chart_renders_with_no_browser_error(page, shop):
    log_in(page, keyboard=True)
    canvas = page.locator("#turnovers-chart[data-rendered]")
    canvas.wait_for()
    assert canvas.get_attribute("data-rendered") == "4"
    painted = page.evaluate("""() => {
        const c = document.getElementById('turnovers-chart');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
        return n; }""")
    assert painted > 1000, painted
    accrued = sum(money_text(t) for t in page.locator("#turnovers tbody td:nth-child(2)").all_inner_texts())
    assert accrued == sum(D(s["BonusAccrued"]) for s in shop["sales"])
    shot(page, "dashboard")
    assert page.errors == []


def test_tables_sort_by_a_keyboard_press_on_the_header(page, shop):
    log_in(page)
    page.goto(f"/admin/cards/{CARD}")
    header = page.locator("#history thead th").nth(6).get_by_role("button")
    header.focus()
    page.keyboard.press("Enter")
    values = [money_text(t) for t in page.locator("#history tbody td:nth-child(7)").all_inner_texts()]
    assert values == sorted(values) and len(values) == 5
    page.keyboard.press("Enter")
    values = [money_text(t) for t in page.locator("#history tbody td:nth-child(7)").all_inner_texts()]
    assert values == sorted(values, reverse=True)


def test_the_skip_link_is_the_first_stop_of_the_keyboard(page, shop):
    log_in(page)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Перейти к содержанию"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"


def test_the_balances_csv_downloaded_is_the_cli_file(page, shop, database_url, tmp_path):
    log_in(page)
    today = datetime.now(timezone.utc).astimezone(shop["billing"].settings.tz).date()
    first = today - timedelta(days=10)
    page.goto(f"/admin/reports/balances?from={first.isoformat()}&to={today.isoformat()}")
    assert page.locator("#balances-lines tbody tr").count() > 3
    shot(page, "balances")
    with page.expect_download() as got:
        page.locator("#csv-link").click()
    downloaded = tmp_path / "web.csv"
    got.value.save_as(downloaded)
    cli_file = tmp_path / "cli.csv"
    subprocess.run([str(Path(sys.executable).parent / "kkmtransfer"), "report", "balances", "--from",
                    first.isoformat(), "--to", today.isoformat(), "--csv", str(cli_file)], check=True,
                   capture_output=True, env=dict(os.environ, KKMTRANSFER_DATABASE_URL=database_url), timeout=60)
    assert downloaded.read_bytes() == cli_file.read_bytes()


@pytest.mark.parametrize("where", ["/admin/", f"/admin/cards/{CARD}", "/admin/reports/balances"])
def test_pages_fit_a_tablet_width(browser, site, shop, database_url, where):
    context = browser.new_context(viewport=TABLET, base_url=site)
    pg = context.new_page()
    pg.shots = database_url.startswith("sqlite")
    log_in(pg)
    pg.goto(where)
    overflow = pg.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{where} is {overflow}px wider than a tablet"
    if where == f"/admin/cards/{CARD}":
        shot(pg, "card-tablet")
    context.close()


def test_a_viewer_sees_no_command_and_a_forged_post_is_refused(page, shop, site):
    log_in(page, "viewer")
    page.goto(f"/admin/cards/{CARD}")
    assert page.get_by_role("button", name="Заблокировать").count() == 0
    assert page.get_by_role("button", name="Аннулировать бонусы").count() == 0
    # the browser posts the operator's form anyway, with the viewer's valid token
    token = page.evaluate("document.querySelector('input[name=csrf_token]').value")
    status = page.evaluate("""async ([url, token]) => {
        const r = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                                    body: 'csrf_token=' + encodeURIComponent(token)});
        return r.status; }""", [f"/admin/cards/{CARD}/block", token])
    assert status == 403
    assert shop["soap"].service.GetCardInfo(CARD).Status == "Active"


def test_a_form_posted_from_the_browser_without_its_csrf_token_is_refused(page, shop):
    log_in(page, "operator")
    page.goto(f"/admin/cards/{CARD}")
    status = page.evaluate("""async (url) => {
        const r = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                                    body: 'page=1'});
        return r.status; }""", f"/admin/cards/{CARD}/block")
    assert status == 400
    assert shop["soap"].service.GetCardInfo(CARD).Status == "Active"


def test_an_action_previewed_confirmed_followed_to_the_end_and_cancelled(page, shop):
    soap = shop["soap"]
    before = [soap.service.GetCardInfo(f"77700000{n:02d}").BonusBalance for n in (3, 4, 5)]
    log_in(page)
    page.get_by_role("link", name="Бонус-акции").click()
    page.get_by_role("link", name="Начислить бонусы").click()
    page.get_by_label("Диапазон номеров").check()
    page.get_by_label("с", exact=True).fill("7770000003")
    page.get_by_label("по", exact=True).fill("7770000005")
    page.get_by_label("Сумма бонусов на карту").fill("25,00")
    page.get_by_label("Примечание").fill("Открытие магазина")
    page.get_by_role("button", name="Показать, что будет сделано").click()
    assert page.locator("#preview-cards").inner_text() == "3"
    assert money_text(page.locator("#preview-amount").inner_text()) == D("75.00")
    shot(page, "action-preview")
    assert [soap.service.GetCardInfo(f"77700000{n:02d}").BonusBalance for n in (3, 4, 5)] == before
    page.get_by_role("button", name="Подтвердить и запустить").click()
    page.wait_for_selector('#action-state[data-status="done"]', timeout=30000)  # the page refreshes itself
    assert "3 из 3 (100%)" in page.locator("dd", has=page.locator("#action-progress")).inner_text().replace("\u00a0", " ")
    after = [soap.service.GetCardInfo(f"77700000{n:02d}").BonusBalance for n in (3, 4, 5)]
    assert after == [b + D("25.00") for b in before]
    shot(page, "action")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Отменить акцию").click()
    page.wait_for_selector('#action-state[data-status="cancelled"]', timeout=30000)
    assert [soap.service.GetCardInfo(f"77700000{n:02d}").BonusBalance for n in (3, 4, 5)] == before
    page.get_by_role("link", name="Все акции").click()
    shot(page, "actions")
    assert page.errors == []


def test_a_journal_reject_dismissed_in_the_browser(page, shop, tmp_path):
    from kkmtransfer.service_layer.journal import JournalImport

    from .test_journal import journal, line

    path = journal(tmp_path, "kkm07.csv", line(number="1", card="NOPE1", accrued="3.00"),
                   line(number="2", card="NOPE2", accrued="4.00"))
    assert JournalImport(shop["billing"]).import_file(path).rejected == 2
    log_in(page)
    page.get_by_role("link", name="Журналы касс").click()
    assert page.locator("#rejects-total").inner_text() == "2"
    shot(page, "journal")
    first = page.locator("#rejects tbody tr").first
    first.get_by_label("Причина отказа", exact=False).fill("карта не выдавалась")
    page.once("dialog", lambda dialog: dialog.accept())
    first.get_by_role("button", name="Отклонить").click()
    page.wait_for_selector(".flash.ok")
    assert page.locator("#rejects-total").inner_text() == "1"
    assert len(JournalImport(shop["billing"]).rejects()) == 1
    assert page.errors == []


def test_every_sortable_table_downloads_as_csv(page, shop, tmp_path):
    log_in(page)
    page.goto(f"/admin/cards/{CARD}")
    with page.expect_download() as got:
        page.get_by_role("button", name="Скачать таблицу в CSV: Операции по карте", exact=False).click()
    path = tmp_path / "history.csv"
    got.value.save_as(path)
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    assert lines[0].split(";")[:3] == ["Время", "Операция", "Источник"]
    assert len(lines) == 1 + page.locator("#history tbody tr").count()
    sums = sorted(D(line.split(";")[5].replace(",", ".")) for line in lines[1:])
    assert sums == sorted([*(D(s["ReceiptSum"]) for s in shop["sales"] if s["CardNumber"] == CARD), D("300.00")])


def test_upload_a_journal_file_and_see_it_processed(page, shop, tmp_path):
    from .test_journal import journal, line

    path = journal(tmp_path, "kkm-browser.csv", line(number="501", card=CARD, accrued="7.00"),
                   line(number="502", card="NOPE9", accrued="1.00"))
    before = shop["soap"].service.GetCardInfo(CARD).BonusBalance
    log_in(page)
    page.get_by_role("link", name="Журналы касс").click()
    page.get_by_label("Файл журнала кассы", exact=False).set_input_files(str(path))
    page.get_by_role("button", name="Загрузить").click()
    page.wait_for_selector(".flash.ok")
    # the worker takes it after the request has answered; the page refreshes itself until it is done
    page.wait_for_selector('tr[data-file="kkm-browser.csv"][data-state="done"]', timeout=30000)
    row = page.locator('tr[data-file="kkm-browser.csv"]')
    cells = row.locator("td").all_inner_texts()
    assert cells[2] == "2" and cells[4] == "1" and cells[6] == "1"  # rows, applied, rejected
    assert shop["soap"].service.GetCardInfo(CARD).BonusBalance == before + D("7.00")
    shot(page, "journal-files")
    assert page.errors == []


def test_the_audit_page_lists_the_command_just_run(page, shop):
    log_in(page)
    page.goto(f"/admin/cards/{CARD}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Заблокировать").click()
    page.wait_for_selector(".flash.ok")
    page.get_by_role("link", name="Аудит").click()
    page.get_by_label("Действие", exact=True).select_option("cards.block")
    page.get_by_role("button", name="Показать").click()
    first = page.locator("#audit tbody tr").first
    assert first.get_attribute("data-action") == "cards.block"
    assert "operator" in first.inner_text() and CARD in first.inner_text()
    shot(page, "audit")
    assert page.errors == []


def test_a_password_change_logs_the_old_session_out(browser, page, shop, site):
    log_in(page, "operator")
    page.goto(f"/admin/cards/{CARD}")
    admin_context = browser.new_context(viewport=DESKTOP, locale="ru-RU", base_url=site)
    admin = admin_context.new_page()
    admin.shots = page.shots
    log_in(admin, "admin")
    admin.get_by_role("link", name="Операторы").click()
    admin.get_by_role("textbox", name="Имя").fill("operator")
    admin.get_by_label("Роль", exact=True).select_option("operator")
    admin.get_by_label("Пароль (не короче 8 символов)").fill("changed-pass-1")
    admin.get_by_label("Пароль ещё раз").fill("changed-pass-1")
    admin.get_by_role("button", name="Сохранить").click()
    admin.wait_for_selector(".flash.ok")
    admin.get_by_role("link", name="Программа").click()
    shot(admin, "program")
    admin_context.close()
    page.reload()
    assert "/admin/login" in page.url  # the operator's old session is over
    page.get_by_label("Имя оператора").fill("operator")
    page.get_by_label("Пароль").fill("changed-pass-1")
    page.get_by_role("button", name="Войти").click()
    page.wait_for_url("**/admin/**")
    assert "/admin/login" not in page.url
