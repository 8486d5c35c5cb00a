"""A back office that cannot hurt by one keystroke (issue 12 §5), the audit trail (§3) and registers bound
to their KKM codes or store (issue 13). Each refusal: one line, a non-zero exit, nothing changed."""
from __future__ import annotations

import json
import os
import pty
import subprocess
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest
from sqlalchemy import func, inspect, select, text
from zeep.exceptions import Fault

from kkmtransfer.adapters.db import actions, audit, cards, operations, users
from kkmtransfer.adapters.journal_file import HEADER

from .conftest import PASSWORD, USER, zeep_client
from .helpers import op_dict, request
from .test_cli import KKM, cli


def one_line_error(proc, code=1, *words):
    err = proc.stderr.strip()
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def count(db, table, *where) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def snapshot(db) -> dict:
    """What a refused command must leave as it was."""
    with db.engine.connect() as conn:
        return {
            "operations": count(db, operations), "actions": count(db, actions), "audit": count(db, audit),
            "rules": conn.execute(select(cards.c.number, cards.c.count_delay_days, cards.c.status)
                                  .order_by(cards.c.number)).all(),
        }


def bonus(db, number) -> D:
    return db.card_info(number).balances.bonus


@pytest.fixture
def chain(db):
    """Cards 1..12 (plain numbers) and 20000001..20000005: a text range 1..5 would hold every one."""
    db.add_card_range(1, 12)
    db.add_card_range(1, 5, "2000", 4)
    return db


# -- card ranges -------------------------------------------------------------------------------
def test_a_numeric_range_means_the_numbers_not_a_text_range(chain, database_url):
    out = cli(database_url, "actions", "credit", "--amount", "2.00", "--from", "1", "--to", "5", "--yes").stdout
    assert "5 card(s), 10.00 credited" in out
    assert {n: bonus(chain, n) for n in ("1", "5", "6", "10", "12", "20000001")} == {
        "1": D("2.00"), "5": D("2.00"), "6": D("0.00"), "10": D("0.00"), "12": D("0.00"), "20000001": D("0.00")}
    # as text "2" > "10": the range would be refused or empty; as numbers it is 2..10
    out = cli(database_url, "cards", "set-rule", "--from", "2", "--to", "10", "--count-delay-days", "4",
              "--yes").stdout
    assert "rules set on 9 card(s)" in out
    with chain.engine.connect() as conn:
        changed = set(conn.execute(select(cards.c.number).where(cards.c.count_delay_days == 4)).scalars())
    assert changed == {str(n) for n in range(2, 11)}


@pytest.mark.parametrize("command", [
    ["actions", "credit", "--amount", "1.00", "--from", "5", "--to", "1", "--yes"],
    ["actions", "credit", "--amount", "1.00", "--from", "20000005", "--to", "20000001", "--yes"],
    ["cards", "set-rule", "--from", "10", "--to", "9", "--count-delay-days", "1", "--yes"],
    ["cards", "set-rule", "--from", "B", "--to", "A", "--count-delay-days", "1", "--yes"],
], ids=["credit", "credit-long", "set-rule", "set-rule-text"])
def test_from_after_to_is_refused(chain, database_url, command):
    before = snapshot(chain)
    one_line_error(cli(database_url, *command, check=False), 1, "after --to")
    assert snapshot(chain) == before


def test_a_range_with_no_card_is_refused_not_recorded_as_a_done_action(chain, database_url):
    before = snapshot(chain)
    one_line_error(cli(database_url, "actions", "credit", "--amount", "1.00", "--from", "100", "--to", "200",
                       "--yes", check=False), 1, "no card")
    one_line_error(cli(database_url, "cards", "set-rule", "--from", "100", "--to", "200", "--count-delay-days",
                       "1", "--yes", check=False), 1, "no card")
    assert snapshot(chain) == before


# -- confirmation, --yes, --dry-run --------------------------------------------------------------
MANY = [
    ["actions", "credit", "--amount", "1.50", "--all-active"],
    ["cards", "set-rule", "--from", "1", "--to", "12", "--count-delay-days", "2"],
]


@pytest.mark.parametrize("command", MANY, ids=["credit", "set-rule"])
def test_many_cards_without_a_terminal_need_yes_and_dry_run_changes_nothing(chain, database_url, command):
    before = snapshot(chain)
    proc = cli(database_url, *command, check=False)
    one_line_error(proc, 1, "--yes")
    assert "17 card(s)" in proc.stdout or "12 card(s)" in proc.stdout  # what it would have done was shown
    dry = cli(database_url, *command, "--dry-run").stdout
    assert dry.startswith("dry run") and ("17 card(s)" in dry or "12 card(s)" in dry)
    if "credit" in command:
        assert "25.50" in dry  # 17 cards × 1.50
    assert snapshot(chain) == before
    cli(database_url, *command, "--yes")
    assert snapshot(chain) != before


def _on_a_terminal(database_url, args, answer: str) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin/stdout and type ``answer``."""
    main, secondary = pty.openpty()
    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=database_url)
    proc = subprocess.Popen([KKM, *args], stdin=secondary, stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    output = b""
    os.write(main, answer.encode() + b"\n")
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    proc.wait(timeout=60)
    os.close(main)
    return proc.returncode, output.decode(errors="replace")


def test_on_a_terminal_the_operator_is_asked_and_no_changes_nothing(chain, database_url):
    before = snapshot(chain)
    args = ["actions", "credit", "--amount", "1.00", "--from", "1", "--to", "3"]
    code, out = _on_a_terminal(database_url, args, "n")
    assert code == 1 and "3 card(s), 3.00 in all" in out and "Go on?" in out and "not confirmed" in out
    assert snapshot(chain) == before
    code, out = _on_a_terminal(database_url, args, "y")
    assert code == 0, out
    assert [bonus(chain, n) for n in ("1", "3", "4")] == [D("1.00"), D("1.00"), D("0.00")]


def test_cancel_and_zero_show_first_and_ask(chain, database_url):
    out = cli(database_url, "actions", "credit", "--amount", "4.00", "--from", "1", "--to", "2", "--yes").stdout
    action_id = out.split("action ")[-1].split(":")[0]
    before = snapshot(chain)
    proc = cli(database_url, "actions", "cancel", action_id, check=False)
    one_line_error(proc, 1, "--yes")
    assert "8.00 on 2 card(s)" in proc.stdout
    assert "8.00 on 2 card(s)" in cli(database_url, "actions", "cancel", action_id, "--dry-run").stdout
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    proc = cli(database_url, "actions", "zero", "--inactive-since", today, check=False)
    one_line_error(proc, 1, "--yes")
    assert "on 17 card(s)" not in proc.stdout and "2 card(s)" in proc.stdout  # only the two with bonuses
    assert snapshot(chain) == before
    cli(database_url, "actions", "cancel", action_id, "--yes")
    assert bonus(chain, "1") == D("0.00")


# -- demo, empty and wrong databases -----------------------------------------------------------------
def test_demo_refuses_a_database_with_real_data(db, database_url):
    db.add_user("cashier", "a-real-password")
    db.add_card_range(1, 3, "9", 3)
    with db.engine.connect() as conn:
        hashes = conn.execute(select(users.c.name, users.c.password_hash).order_by(users.c.name)).all()
    before = snapshot(db)
    one_line_error(cli(database_url, "demo", check=False), 1, "not a demo database")
    with db.engine.connect() as conn:
        assert conn.execute(select(users.c.name, users.c.password_hash).order_by(users.c.name)).all() == hashes
    assert snapshot(db) == before


def test_only_db_upgrade_and_demo_create_a_schema(tmp_path):
    typo = tmp_path / "typo.sqlite3"
    for command in (["users", "list"], ["cards", "show", "1"], ["report", "audit"], ["db", "current"]):
        one_line_error(cli(f"sqlite:///{typo}", *command, check=False), 1, "no database file")
    assert not typo.exists()
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    for command in (["users", "list"], ["nightly"], ["journal", "rejects"]):
        one_line_error(cli(f"sqlite:///{empty}", *command, check=False), 1, "kkmtransfer db upgrade")
    import sqlite3

    assert sqlite3.connect(empty).execute("select count(*) from sqlite_master").fetchone() == (0,)
    cli(f"sqlite:///{empty}", "db", "upgrade")
    assert "kassa1" in cli(f"sqlite:///{tmp_path / 'demo.sqlite3'}", "demo").stdout


@pytest.mark.postgres
def test_an_empty_postgresql_database_is_refused_and_left_empty(pg_admin):
    import uuid

    name = f"kkmempty_{uuid.uuid4().hex[:8]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = str(pg_admin.url.set(database=name).render_as_string(hide_password=False))
        one_line_error(cli(url, "users", "list", check=False), 1, "kkmtransfer db upgrade")
        from sqlalchemy import create_engine

        engine = create_engine(url)
        assert inspect(engine).get_table_names() == []
        engine.dispose()
    finally:
        with pg_admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))


@pytest.mark.parametrize("url, words", [
    ("not a url", ["not a database URL"]),
    ("postgresql+psycopg2://postgres@127.0.0.1:5432/kkm_no_such_database", ["does not exist"]),
    ("postgresql://postgres@127.0.0.1:1/postgres", ["server running"]),
    ("postgres://postgres@127.0.0.1:1/postgres", ["server running"]),
    ("mysql://u@h/d", ["unsupported database"]),
    ("postgresql+asyncpg://u@h/d", ["not installed"]),
])
def test_wrong_database_urls_are_one_line(url, words):
    one_line_error(cli(url, "users", "list", check=False), 1, *words)


@pytest.mark.postgres
def test_postgresql_urls_without_the_driver_are_accepted(db, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL URLs")
    db.add_user("plain-url", "long-enough-1")
    for scheme in ("postgresql://", "postgres://"):
        url = scheme + database_url.split("://", 1)[1]
        assert "plain-url" in cli(url, "users", "list").stdout


def test_output_paths_in_missing_folders_are_one_line(chain, database_url, tmp_path):
    missing = tmp_path / "nope" / "out.csv"
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    for command in (["export", "balances", "--out", str(missing)],
                    ["report", "balances", "--from", today, "--to", today, "--csv", str(missing)],
                    ["report", "operations", "--csv", str(missing)]):
        one_line_error(cli(database_url, *command, check=False), 1, "does not exist")
    assert not missing.parent.exists()


def test_reports_refuse_an_unknown_card_or_kind(chain, database_url):
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    one_line_error(cli(database_url, "report", "operations", "--card", "NOPE", check=False), 1, "CardNotFound")
    one_line_error(cli(database_url, "report", "operations", "--kind", "Sales", check=False), 1, "unknown kind")
    one_line_error(cli(database_url, "report", "balances", "--from", today, "--to", today, "--card", "NOPE",
                       check=False), 1, "CardNotFound")
    one_line_error(cli(database_url, "report", "balances", "--from", "2026-02-01", "--to", "2026-01-01",
                       check=False), 1, "after --to")


def test_journal_import_with_rejects_exits_non_zero_and_applies_the_rest(chain, database_url, tmp_path):
    when = datetime.now(timezone.utc).isoformat()
    rows = [f"K1;1;{when};Sale;1;R1;100.00;5.00;0.00;;;;;", f"K1;2;{when};Sale;NOPE;R2;100.00;5.00;0.00;;;;;"]
    path = tmp_path / "kassa-1.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    proc = cli(database_url, "journal", "import", str(path), check=False)
    assert proc.returncode == 3 and "1 applied" in proc.stdout and "1 rejected" in proc.stdout
    assert "journal rejects" in proc.stderr and "Traceback" not in proc.stderr
    # offline operations carry the journal file as their actor
    with chain.engine.connect() as conn:
        assert conn.execute(select(operations.c.actor).where(operations.c.card_number == "1")).scalar_one() \
            == "kassa-1.csv"
    proc = cli(database_url, "journal", "import", str(path), check=False)  # again: the reject stays
    assert proc.returncode == 3


# -- the audit trail -------------------------------------------------------------------------------
def test_every_back_office_change_leaves_an_audit_row(chain, database_url):
    sale = chain.register_operation(request("3", receipt_sum="100.00", accrued="7.00"))
    steps = [
        ["cards", "block", "1"], ["cards", "unblock", "1"], ["cards", "set-phone", "2", "+7 916 000-00-01"],
        ["cards", "set-rule", "3", "--count-delay-days", "1"],
        ["cards", "set-rule", "--from", "4", "--to", "6", "--count-delay-days", "1", "--yes"],
        ["promotions", "add", "P1", "--name", "Promo"], ["promotions", "close", "P1"],
        ["receipts", "annul", sale.operation_id],
    ]
    for step in steps:
        cli(database_url, "--actor", "anna", *step)
    cli(database_url, "--actor", "boris", "users", "add", "kassa-9", "--password-stdin", stdin="long-enough-9\n")
    cli(database_url, "--actor", "boris", "users", "disable", "kassa-9")
    out = cli(database_url, "--actor", "boris", "actions", "credit", "--amount", "1.00", "--from", "7", "--to", "8",
              "--yes").stdout
    action_id = out.split("action ")[-1].split(":")[0]
    cli(database_url, "--actor", "boris", "actions", "cancel", action_id, "--yes")
    with chain.engine.connect() as conn:
        rows = conn.execute(select(audit.c.actor, audit.c.action, audit.c.object, audit.c.details)
                            .order_by(audit.c.id)).all()
    got = [(r.actor, r.action, r.object) for r in rows if r.actor in ("anna", "boris")]
    assert got == [
        ("anna", "cards.block", "1"), ("anna", "cards.unblock", "1"), ("anna", "cards.set-phone", "2"),
        ("anna", "cards.set-rule", "3"), ("anna", "cards.set-rule", "4..6"), ("anna", "promotions.add", "P1"),
        ("anna", "promotions.close", "P1"), ("anna", "receipts.annul", sale.operation_id),
        ("boris", "users.add", "kassa-9"), ("boris", "users.disable", "kassa-9"),
        ("boris", "actions.credit", action_id), ("boris", "actions.cancel", action_id),
    ]
    assert json.loads(rows[[r.action for r in rows].index("receipts.annul")].details)["amount"] == "7.00"
    report = cli(database_url, "report", "audit", "--actor", "boris").stdout.splitlines()
    assert len(report) == 4 and all("\tboris\t" in line for line in report)
    assert "cards.set-phone" in cli(database_url, "report", "audit").stdout
    # the OS user when no --actor is given
    cli(database_url, "cards", "block", "9")
    import getpass

    assert f"\t{getpass.getuser()}\tcards.block\t9" in cli(database_url, "report", "audit").stdout


def test_a_refused_change_leaves_no_audit_row(chain, database_url):
    before = count(chain, audit)
    cli(database_url, "cards", "block", "NOPE", check=False)
    cli(database_url, "users", "disable", "nobody", check=False)
    assert count(chain, audit) == before


# -- online actor and registers bound to their KKM codes / store --------------------------------------
def test_online_operations_carry_the_http_user(db, server):
    db.add_card_range(1, 1, "W", 0)
    db.add_user(USER, PASSWORD)
    client = zeep_client(server, USER, PASSWORD)
    result = client.service.RegisterOperation(Operation=op_dict("W1"))
    with db.engine.connect() as conn:
        assert conn.execute(select(operations.c.actor).where(operations.c.id == result.OperationId)
                            ).scalar_one() == USER


def test_a_bound_user_posts_only_for_its_registers(db, database_url, server):
    db.add_card_range(1, 1, "S", 0)
    cli(database_url, "users", "add", "kassa-k", "--kkm", "K1,K2", "--password-stdin", stdin="long-enough-k\n")
    cli(database_url, "users", "add", "kassa-s", "--store", "S7", "--password-stdin", stdin="long-enough-s\n")
    cli(database_url, "users", "add", "kassa-free", "--password-stdin", stdin="long-enough-f\n")
    assert "KKM K1,K2" in cli(database_url, "users", "list").stdout
    by_kkm = zeep_client(server, "kassa-k", "long-enough-k")
    by_store = zeep_client(server, "kassa-s", "long-enough-s")
    free = zeep_client(server, "kassa-free", "long-enough-f")
    before = count(db, operations)
    with pytest.raises(Fault) as refused:
        by_kkm.service.RegisterOperation(Operation=op_dict("S1", kkm="K3"))
    assert refused.value.code.endswith("Client.ValidationError") and "K1, K2" in refused.value.message
    with pytest.raises(Fault) as refused:
        by_store.service.RegisterOperation(Operation=op_dict("S1", kkm="K3", Store="S8"))
    assert refused.value.code.endswith("Client.ValidationError") and "S7" in refused.value.message
    assert count(db, operations) == before
    assert by_kkm.service.RegisterOperation(Operation=op_dict("S1", kkm="K2")).Status == "Applied"
    assert by_store.service.RegisterOperation(Operation=op_dict("S1", kkm="K9", Store="S7")).Status == "Applied"
    assert free.service.RegisterOperation(Operation=op_dict("S1", kkm="ANY", Store="X")).Status == "Applied"
    # unbinding gives the freedom back
    cli(database_url, "users", "add", "kassa-k", "--kkm", "", "--password-stdin", stdin="long-enough-k\n")
    assert by_kkm.service.RegisterOperation(Operation=op_dict("S1", kkm="K3")).Status == "Applied"


def test_config_show_masks_passwords():
    env = dict(os.environ, KKMTRANSFER_DATABASE_URL="postgresql+psycopg2://kkm:s3cr3t-pw@db:5432/kkm",
               KKMTRANSFER_BROKER_URL="redis://:br0ker-pw@redis:6379/0")
    out = subprocess.run([KKM, "config", "show"], capture_output=True, text=True, env=env, timeout=30).stdout
    assert "s3cr3t-pw" not in out and "br0ker-pw" not in out
    assert "KKMTRANSFER_DATABASE_URL = postgresql+psycopg2://kkm:***@db:5432/kkm" in out
    assert "KKMTRANSFER_TIMEZONE = Europe/Moscow" in out and "KKMTRANSFER_BROKER_URL = redis://:***@redis" in out
