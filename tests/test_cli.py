"""The back-office CLI, run as the installed `kkmtransfer` command."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal as D
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests

from kkmtransfer.domain.model import CardStatus

from .conftest import zeep_client
from .helpers import ISSUED, op_dict

KKM = str(Path(sys.executable).parent / "kkmtransfer")


def cli(database_url, *args, stdin: str | None = None, check=True):
    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=database_url)
    proc = subprocess.run([KKM, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"kkmtransfer {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def _all_commands():
    """Every group and command of the CLI, walked from the top."""
    import click

    from kkmtransfer.cli import main

    found = []

    def walk(cmd, path):
        found.append(path)
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                walk(sub, [*path, name])

    walk(main, [])
    return found


COMMANDS = _all_commands()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_every_command_explains_itself(command):
    proc = subprocess.run([KKM, *command, "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "Usage:" in proc.stdout and len(proc.stdout.splitlines()) > 4


def test_users_and_cards_from_the_command_line(db, database_url, server):
    cli(database_url, "db", "upgrade")  # again: a no-op
    out = cli(database_url, "users", "add", "kassa-7", "--password-stdin", stdin="s3cret-pass-12\n").stdout
    assert "created" in out
    assert "kassa-7" in cli(database_url, "users", "list").stdout

    out = cli(database_url, "cards", "add-range", "--from", "5", "--to", "9", "--prefix", "2000", "--width", "4",
              "--holder", "Group A").stdout
    assert "5 cards created" in out
    assert "0 cards created, 5 already existed" in cli(database_url, "cards", "add-range", "--from", "5", "--to",
                                                      "9", "--prefix", "2000", "--width", "4").stdout
    assert db.card_info("20000007").holder == "Group A"

    assert "9161234567" in cli(database_url, "cards", "set-phone", "20000005", "+7 916 123-45-67").stdout
    cli(database_url, "cards", "block", "20000006")
    assert db.card_info("20000006").status is CardStatus.BLOCKED
    cli(database_url, "cards", "unblock", "20000006")
    assert db.card_info("20000006").status is CardStatus.ACTIVE

    # the user made with the CLI works over SOAP, and `cards show` reads what the register did
    client = zeep_client(server, "kassa-7", "s3cret-pass-12")
    assert client.service.FindCardByPhone("89161234567").CardNumber == "20000005"
    client.service.RegisterOperation(Operation=op_dict("20000005", receipt_sum="10.00", accrued="1.50"))
    show = cli(database_url, "cards", "show", "20000005").stdout
    assert "bonus         1.50" in show and "receipts      1" in show


def test_cli_errors_are_one_clear_line(db, database_url):
    proc = cli(database_url, "cards", "show", "NOPE", check=False)
    assert proc.returncode == 1 and "Client.CardNotFound" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli(database_url, "cards", "set-phone", "NOPE", "123", check=False)
    assert proc.returncode == 1 and "Client.ValidationError" in proc.stderr
    proc = cli(database_url, "users", "add", "short", "--password-stdin", stdin="abc\n", check=False)
    assert proc.returncode == 1 and "at least 12" in proc.stderr


def test_demo_then_serve_answers_over_http(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    out = cli(url, "demo").stdout
    assert "kassa1" in out and "7770000001" in out
    assert "0 new" in cli(url, "demo").stdout  # running it twice is harmless

    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=url)
    proc = subprocess.Popen([KKM, "serve", "--host", "127.0.0.1", "--port", "0"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 20
        while "KKMTransfer on" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        endpoint = line.split()[2]
        assert requests.get(endpoint + "?wsdl", timeout=5).status_code == 200
        info = zeep_client(endpoint, "kassa1", "kassa1-demo-pass").service.GetCardInfo("7770000001")
        assert info.BonusBalance == D("0.00") and info.Status == "Active"
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_old_schema_is_refused_until_db_upgrade(tmp_path):
    old = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    cli(old, "db", "upgrade", "--revision", "0001")
    for command in (["serve", "--port", "0"], ["cards", "show", "1"]):
        proc = cli(old, *command, check=False)
        assert proc.returncode == 1 and "kkmtransfer db upgrade" in proc.stderr
    from kkmtransfer.adapters.migrate import head_revision

    assert f"revision {head_revision(old)}" in cli(old, "db", "upgrade").stdout


def test_promotions_rules_and_nightly_from_the_command_line(db, database_url):
    cli(database_url, "promotions", "add", "SPRING", "--name", "Spring", "--delay-days", "1", "--lifetime-days",
        "30", "--valid-from", "2026-03-01", "--valid-to", "2026-05-31")
    cli(database_url, "promotions", "add", "NY", "--name", "New year", "--until", "2027-01-10")
    listing = cli(database_url, "promotions", "list").stdout
    assert "SPRING" in listing and "starts after 1 day(s), usable for 30 day(s)" in listing
    assert "usable through 2027-01-10" in listing
    proc = cli(database_url, "promotions", "add", "BAD", "--name", "x", "--lifetime-days", "3", "--until",
               "2027-01-01", check=False)
    assert proc.returncode == 2 and "exclude each other" in proc.stderr
    assert "closed" in cli(database_url, "promotions", "close", "NY").stdout

    db.add_card_range(1, 5, "R", 0, None, issued=ISSUED)
    out = cli(database_url, "cards", "set-rule", "--from", "R2", "--to", "R4", "--accumulation-delay-days", "2",
              "--count-lifetime-days", "90", "--yes").stdout
    assert "rules set on 3 card(s)" in out
    assert "1 card" in cli(database_url, "cards", "set-rule", "R5", "--count-delay-days", "1").stdout
    proc = cli(database_url, "cards", "set-rule", "R1", "--from", "R1", "--to", "R2", "--count-delay-days", "1",
               check=False)
    assert proc.returncode == 1 and "give either NUMBER" in proc.stderr

    out = cli(database_url, "nightly").stdout
    assert "done; write-off 0 lots in 0 lines, accrual 0 lots in 0 lines" in out
    assert "already done" in cli(database_url, "nightly").stdout


def test_reports_and_ledger_verify_from_the_command_line(db, database_url, tmp_path):
    from sqlalchemy import update

    from kkmtransfer.adapters.db import lots

    from .helpers import request

    db.add_card_range(1, 2, "Q", 0, None, issued=ISSUED)
    sale = request("Q1", receipt_sum="100.00", accrued="10.00", kkm="KKM-5")
    db.register_operation(sale)
    db.register_operation(request("Q2", receipt_sum="40.00", accrued="4.00", kkm="KKM-6"))
    today = db.clock().astimezone(ZoneInfo("Europe/Moscow")).date().isoformat()
    out = cli(database_url, "report", "balances", "--from", today, "--to", today, "--csv",
              str(tmp_path / "b.csv")).stdout
    assert "opening" in out and "TOTAL" in out
    rows = (tmp_path / "b.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "card;measure;opening;accrued;spent;expired;returned;closing"
    assert "Q1;bonus;0.00;10.00;0.00;0.00;0.00;10.00" in rows and "TOTAL;bonus;0.00;14.00;0.00;0.00;0.00;14.00" in rows
    ops = cli(database_url, "report", "operations", "--kkm", "KKM-5").stdout.splitlines()
    assert len(ops) == 2 and sale.operation_id in ops[1] and "\t10.00\t" in ops[1]
    assert "no actions" in cli(database_url, "report", "actions").stdout

    assert "ledger consistent" in cli(database_url, "ledger", "verify").stdout
    with db.engine.begin() as conn:
        conn.execute(update(lots).where(lots.c.card_number == "Q2", lots.c.measure == "bonus").values(remaining=5))
    proc = cli(database_url, "ledger", "verify", check=False)
    assert proc.returncode == 1 and "entries sum to 4.00" in proc.stdout and "1 difference" in proc.stderr
    with db.engine.begin() as conn:
        conn.execute(update(lots).where(lots.c.card_number == "Q2", lots.c.measure == "bonus").values(remaining=4))


def test_a_reject_is_dismissed_by_hand_with_its_reason(db, database_url, tmp_path):
    db.add_card_range(1, 1, "R", 0, None, issued=ISSUED)
    journal = tmp_path / "kkm9.csv"
    journal.write_text(
        "KKM;TransactionNumber;TransactionTime;Kind;CardNumber;ReceiptNumber;ReceiptSum;BonusAccrued;BonusSpent;"
        "AccumulationDelta;ReceiptCountDelta;OperationId;PromotionCode;OriginalOperationId\n"
        "KKM-9;1;2026-11-20T10:00:00+03:00;Sale;R1;1;100.00;5.00;0.00;;;;;\n"
        "KKM-9;2;2026-11-20T10:05:00+03:00;Sale;NO-SUCH-CARD;2;50.00;0.00;0.00;;;;;\n", encoding="utf-8")
    proc = cli(database_url, "journal", "import", str(journal), check=False)
    assert proc.returncode == 3, proc.stderr
    listed = cli(database_url, "journal", "rejects").stdout
    reject_id = listed.split("\t", 1)[0].lstrip("#")
    assert "NO-SUCH-CARD" in listed and reject_id.isdigit()

    empty = cli(database_url, "journal", "rejects", "dismiss", reject_id, "--reason", "  ", check=False)
    assert empty.returncode == 1 and len(empty.stderr.strip().splitlines()) == 1
    out = cli(database_url, "--actor", "ivanova", "journal", "rejects", "dismiss", reject_id,
              "--reason", "card never issued").stdout
    assert "dismissed: card never issued (by ivanova)" in out
    assert "no pending rejects" in cli(database_url, "journal", "rejects").stdout
    assert "dismissed" in cli(database_url, "journal", "rejects", "--all").stdout
    again = cli(database_url, "journal", "rejects", "dismiss", reject_id, "--reason", "twice", check=False)
    assert again.returncode == 1 and "not pending" in again.stderr
    assert "journal.dismiss" in cli(database_url, "report", "audit", "--actor", "ivanova").stdout


def test_journal_import_takes_the_number_of_workers(db, database_url, tmp_path):
    db.add_card_range(1, 3, "W", 0, None, issued=ISSUED)
    journal = tmp_path / "kkm8.csv"
    journal.write_text(
        "KKM;TransactionNumber;TransactionTime;Kind;CardNumber;ReceiptNumber;ReceiptSum;BonusAccrued;BonusSpent;"
        "AccumulationDelta;ReceiptCountDelta;OperationId;PromotionCode;OriginalOperationId\n"
        + "".join(f"KKM-8;{i};2026-11-20T10:0{i}:00+03:00;Sale;W{1 + i % 3};{i};100.00;5.00;0.00;;;;;\n"
                  for i in range(6)), encoding="utf-8")
    out = cli(database_url, "journal", "import", "--jobs", "3", "--batch", "1", str(journal)).stdout
    assert "6 rows, 6 applied, 0 already applied, 0 rejected" in out
    # the workers as threads of one process (the default: processes of their own; one on SQLite)
    out = cli(database_url, "journal", "import", "--jobs", "2", "--threads", str(journal)).stdout
    assert "6 rows, 0 applied, 6 already applied, 0 rejected" in out
    assert cli(database_url, "journal", "import", "--jobs", "9", str(journal), check=False).returncode == 2
