"""`kkmtransfer sms test`, `cards set-spend-code`, `report spend-codes`, run as the installed command."""
from __future__ import annotations

import os
import subprocess

import pytest

from .fake_sms_gateway import FakeGateway
from .test_cli import KKM
from .test_spend_codes_service import Outbox

PASSWORD = "cli-secret-pw"


@pytest.fixture(scope="module")
def gateway():
    gw = FakeGateway().start()
    yield gw
    gw.stop()


def run(database_url, *args, stdin=None, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("KKMTRANSFER_")}
    full.update(KKMTRANSFER_DATABASE_URL=database_url, **env)
    return subprocess.run([KKM, *args], input=stdin, capture_output=True, text=True, env=full, timeout=60)


def gateway_env(gateway):
    return dict(KKMTRANSFER_SMS_LOGIN="chain", KKMTRANSFER_SMS_PASSWORD=PASSWORD, KKMTRANSFER_SMS_SENDER="Apteka",
                KKMTRANSFER_SMS_URL=gateway.url)


def test_sms_test_sends_one_message_through_the_gateway(database_url, gateway):
    gateway.reset()
    proc = run(database_url, "sms", "test", "8 (916) 123-45-67", **gateway_env(gateway))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("SMS sent by stream-telecom to 79161234567: message id ")
    [query] = gateway.queries()
    assert query["dadr"] == ["79161234567"] and query["pwd"] == [PASSWORD] and query["sadr"] == ["Apteka"]
    assert "проверка" in query["text"][0]

    gateway.mode, gateway.error_text = "error", "ERROR: invalid sender"
    proc = run(database_url, "sms", "test", "9161234567", **gateway_env(gateway))
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("Error: SMS not sent (stream-telecom): the gateway refused the message: "
                                   "ERROR: invalid sender")
    assert PASSWORD not in proc.stdout + proc.stderr
    gateway.reset()


def test_sms_test_console_and_bad_settings(database_url):
    proc = run(database_url, "sms", "test", "9161234567", "--text", "hello")
    assert proc.returncode == 0 and "SMS sent by console to 79161234567" in proc.stdout
    proc = run(database_url, "sms", "test", "9161234567", KKMTRANSFER_SMS_PROVIDER="stream-telecom")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "KKMTRANSFER_SMS_LOGIN" in proc.stderr
    proc = run(database_url, "sms", "test", "12-34")
    assert proc.returncode == 1 and "Client.ValidationError: Phone" in proc.stderr


def test_set_spend_code_on_a_card_and_a_range(db, database_url):
    from kkmtransfer.service_layer import audit

    db.add_card_range(1, 12, "", 0)  # cards "1" .. "12": the range 1..5 is numeric, not "1", "10", "11", ...
    proc = run(database_url, "cards", "set-spend-code", "1", "on")
    assert proc.returncode == 0 and "card 1 needs an SMS code" in proc.stdout
    assert db.spend_codes.count_between("1", "5") == (5, 1)
    proc = run(database_url, "cards", "set-spend-code", "--from", "1", "--to", "5", "on", "--dry-run")
    assert proc.returncode == 0
    assert proc.stdout.startswith("dry run: 5 card(s) numbered 1 .. 5, 1 of them need a code now: 4 will change")
    proc = run(database_url, "cards", "set-spend-code", "--from", "1", "--to", "5", "on")  # no terminal, no --yes
    assert proc.returncode == 1 and "nothing changed" in proc.stderr
    assert db.spend_codes.count_between("1", "5") == (5, 1)
    proc = run(database_url, "--actor", "ivanova", "cards", "set-spend-code", "--from", "1", "--to", "5", "on",
               "--yes")
    assert proc.returncode == 0 and db.spend_codes.count_between("1", "12") == (12, 5)
    proc = run(database_url, "cards", "set-spend-code", "--from", "2", "--to", "3", "off", "--yes")
    assert proc.returncode == 0 and db.spend_codes.count_between("1", "12") == (12, 3)
    proc = run(database_url, "cards", "set-spend-code", "99", "on")
    assert proc.returncode == 1 and proc.stderr.strip() == "Error: Client.CardNotFound: card 99 not found"
    proc = run(database_url, "cards", "set-spend-code", "1", "maybe")
    assert proc.returncode == 2
    trail = [(r.actor, r.action, r.object, r.details) for r in audit.rows(db.engine)
             if r.action == "cards.set-spend-code"]
    assert trail[1] == ("ivanova", "cards.set-spend-code", "1..5", {"cards": 5, "required": True})
    assert len(trail) == 3


def test_report_spend_codes_lists_requests_and_checks(db, database_url):
    from kkmtransfer.domain.spend_codes import SpendCodeInvalid

    from .helpers import request

    db.add_card_range(7, 7, "Q", 0)
    db.set_card_phone("Q7", "9161234567")
    db.register_operation(request("Q7", accrued="10.00"))
    outbox = db.spend_codes._provider = Outbox()
    db.spend_codes.request_code("Q7", "KKM-9", who="kassa-9")
    wrong = f"{(int(outbox.last_code()) + 1) % 10 ** 6:06d}"
    with pytest.raises(SpendCodeInvalid):
        db.register_operation(request("Q7", spent="1.00", kkm="KKM-9"), spend_code=wrong, actor="kassa-9")
    proc = run(database_url, "report", "spend-codes", "--card", "Q7")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split("\t") == ["time", "action", "outcome", "card", "kkm", "user", "operation_id", "detail"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [(r[1], r[2], r[3], r[4], r[5]) for r in rows] == [("request", "sent", "Q7", "KKM-9", "kassa-9"),
                                                               ("check", "wrong", "Q7", "KKM-9", "kassa-9")]
    assert run(database_url, "report", "spend-codes", "--from", "2001-01-01").stdout.startswith("no spend-code")
