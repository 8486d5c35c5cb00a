"""Operators' roles and the login throttle: the pure rules, then the use cases on both databases."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from kkmtransfer.domain.errors import ValidationError
from kkmtransfer.domain.operators import (
    LOCK_TIME,
    MAX_FAILURES,
    OperatorRole,
    Permission,
    ThrottleState,
    allows,
    parse_role,
)
from kkmtransfer.service_layer.operators import LoginOutcome, Operators

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def test_each_role_can_do_what_the_one_below_can_and_more():
    viewer = {p for p in Permission if allows(OperatorRole.VIEWER, p)}
    operator = {p for p in Permission if allows(OperatorRole.OPERATOR, p)}
    admin = {p for p in Permission if allows(OperatorRole.ADMIN, p)}
    assert viewer == {Permission.READ}
    assert viewer < operator < admin == set(Permission)
    assert Permission.MANAGE_OPERATORS not in operator
    assert not allows("root", Permission.READ)


def test_roles_are_parsed_strictly():
    assert parse_role(" Operator ") is OperatorRole.OPERATOR
    with pytest.raises(ValidationError):
        parse_role("superuser")


def test_the_tenth_failure_locks_for_the_lock_time_then_counting_restarts():
    state = ThrottleState()
    for i in range(MAX_FAILURES - 1):
        state = state.after_failure(T0 + timedelta(seconds=i))
        assert not state.locked(T0 + timedelta(seconds=i))
    state = state.after_failure(T0 + timedelta(minutes=1))
    assert state.locked(T0 + timedelta(minutes=1))
    assert state.retry_after(T0 + timedelta(minutes=1)) == int(LOCK_TIME.total_seconds())
    assert state.locked(T0 + timedelta(minutes=1) + LOCK_TIME - timedelta(microseconds=1))
    later = T0 + timedelta(minutes=1) + LOCK_TIME
    assert not state.locked(later) and state.retry_after(later) == 0
    assert state.after_failure(later) == ThrottleState(1, None)


def test_operators_are_added_updated_and_disabled(db):
    ops = Operators(db)
    assert ops.add("anna", "viewer", "first-password") is True
    assert ops.add("anna", "admin", "second-password") is False
    [anna] = ops.list()
    assert anna.role is OperatorRole.ADMIN and not anna.disabled
    assert ops.login("anna", "first-password").outcome is LoginOutcome.BAD
    assert ops.login("anna", "second-password").operator.name == "anna"
    ops.disable("anna")
    assert ops.login("anna", "second-password").outcome is LoginOutcome.BAD
    assert ops.active("anna") is None
    for bad in (("", "viewer", "long-enough"), ("a b", "viewer", "long-enough"), ("bob", "boss", "long-enough"),
                ("bob", "viewer", "short")):
        with pytest.raises(ValidationError):
            ops.add(*bad)


def test_the_throttle_is_kept_in_the_database_per_name(db, clock):
    clock.set(T0)
    ops = Operators(db)
    ops.add("anna", "operator", "right-password")
    for _ in range(MAX_FAILURES):
        assert ops.login("anna", "wrong").outcome is LoginOutcome.BAD
    # a second service object (another worker) sees the same lock
    locked = Operators(db).login("anna", "right-password")
    assert locked.outcome is LoginOutcome.LOCKED and locked.retry_after == int(LOCK_TIME.total_seconds())
    # a new password given by an admin lifts the lock
    ops.add("anna", "operator", "new-password-1")
    assert ops.login("anna", "new-password-1").outcome is LoginOutcome.OK


# -- the command line -----------------------------------------------------------------------------
def test_operators_from_the_command_line(db, database_url):
    from .test_cli import cli

    out = cli(database_url, "operators", "add", "anna", "--role", "viewer", "--password-stdin",
              stdin="anna-password\n").stdout
    assert "operator anna (viewer) created" in out
    assert "updated" in cli(database_url, "operators", "add", "anna", "--role", "operator", "--password-stdin",
                            stdin="anna-password-2\n").stdout
    assert Operators(db).login("anna", "anna-password-2").operator.role is OperatorRole.OPERATOR
    assert "anna\toperator\tactive" in cli(database_url, "operators", "list").stdout
    short = cli(database_url, "operators", "add", "bob", "--role", "admin", "--password-stdin", stdin="short\n",
                check=False)
    assert short.returncode == 1 and "at least 8 characters" in short.stderr and "Traceback" not in short.stderr
    bad_role = cli(database_url, "operators", "add", "bob", "--role", "root", "--password-stdin", stdin="x" * 9,
                   check=False)
    assert bad_role.returncode == 2 and "viewer" in bad_role.stderr
    cli(database_url, "operators", "disable", "anna")
    assert Operators(db).login("anna", "anna-password-2").outcome is LoginOutcome.BAD


def test_demo_then_serve_has_the_console_at_admin_beside_soap(tmp_path):
    import os
    import re
    import subprocess
    import time

    import requests

    from .test_cli import KKM, cli

    url = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    assert "admin / password: admin-demo" in cli(url, "demo").stdout
    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=url, KKMTRANSFER_SECRET_KEY="s" * 48)
    proc = subprocess.Popen([KKM, "serve", "--host", "127.0.0.1", "--port", "0"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 20
        while not any("web console on" in line for line in lines) and time.monotonic() < deadline:
            lines.append(proc.stderr.readline())
        console = [line for line in lines if "web console on" in line][0].split()[-1]
        soap = [line for line in lines if "KKMTransfer on" in line][0].split()[2]
        assert console.endswith("/admin/") and console.rsplit("/admin/")[0] == soap.rsplit("/KKMTransfer")[0]
        assert requests.get(soap + "?wsdl", timeout=5).status_code == 200
        s = requests.Session()
        form = s.get(console + "login", timeout=5)
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        r = s.post(console + "login", data=dict(csrf_token=token, name="admin", password="admin-demo"), timeout=10)
        assert r.status_code == 200 and r.url == console and "Сводка" in r.text
        card = s.get(console + "cards/", params={"q": "+7 (916) 123-45-67"}, timeout=5)
        assert card.url.endswith("/admin/cards/7770000001") and "Demo holder" in card.text
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_new_password_or_disabling_moves_the_session_epoch_on(db):
    ops = Operators(db)
    ops.add("anna", "operator", "first-password")
    epoch = ops.get("anna").session_epoch
    assert ops.active("anna", epoch).name == "anna"
    ops.add("anna", "operator", "second-password")  # a password change: the old sessions are over
    assert ops.active("anna", epoch) is None
    new = ops.get("anna").session_epoch
    assert new == epoch + 1 and ops.active("anna", new).name == "anna"
    ops.disable("anna")
    ops.add("anna", "operator", "third-password")  # enabled again: still not the sessions from before
    assert ops.active("anna", new) is None and ops.get("anna").session_epoch == new + 2
