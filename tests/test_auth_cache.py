"""Verified register credentials cached per process (KKMTRANSFER_AUTH_CACHE_TTL), and pooled connections
checked without a round trip (issue 10 §2): revocation within the TTL, a wrong password never served from
the cache, the throttle unchanged, the scope taken from the cache, and requests after the database killed
every pooled connection."""
from __future__ import annotations

import time
from dataclasses import replace

import pytest
import requests
from sqlalchemy import event, text

from kkmtransfer.config import ConfigError, Settings
from kkmtransfer.service_layer.credentials import CredentialCache, Principal
from kkmtransfer.service_layer.services import BillingService
from kkmtransfer.soap.http import KKMTransferApp
from kkmtransfer.soap.throttle import AuthThrottle

from .conftest import PASSWORD, USER
from .test_bad_input import CARD, HEADERS, get_card, ledger, operation_exists, reply_of  # noqa: F401
from .test_bad_input import register as register_envelope
from .test_hostile_soap import running


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# -- the cache itself ------------------------------------------------------------------------------

def test_only_the_verified_password_hits_and_entries_expire():
    clock = Clock()
    cache = CredentialCache(ttl=5, clock=clock)
    who = Principal(USER, ("K1",), "S1")
    cache.put(USER, PASSWORD, who)
    assert cache.get(USER, PASSWORD) == who
    assert cache.get(USER, PASSWORD + "x") is None
    assert cache.get(USER, PASSWORD[:-1]) is None
    assert cache.get("kassa-other", PASSWORD) is None
    assert cache.get(USER + "\0" + PASSWORD[:3], PASSWORD[3:]) is None  # the separator cannot be forged
    assert not any(PASSWORD.encode() in key[1] for key in cache._entries)  # never kept in clear
    clock.now += 4.9
    assert cache.get(USER, PASSWORD) == who
    clock.now += 0.2
    assert cache.get(USER, PASSWORD) is None  # expired: the next request checks the database
    cache.put(USER, PASSWORD, who)
    cache.forget(USER)
    assert cache.get(USER, PASSWORD) is None


def test_ttl_zero_remembers_nothing():
    cache = CredentialCache(ttl=0)
    cache.put(USER, PASSWORD, Principal(USER))
    assert cache.get(USER, PASSWORD) is None and not cache._entries


def test_the_cache_is_bounded():
    cache = CredentialCache(ttl=60, max_entries=10)
    for i in range(25):
        cache.put(f"u{i}", PASSWORD, Principal(f"u{i}"))
    assert len(cache._entries) <= 10 and cache.get("u24", PASSWORD) == Principal("u24")


def test_the_setting():
    assert Settings.from_env({}).auth_cache_ttl == 5.0
    assert Settings.from_env({"KKMTRANSFER_AUTH_CACHE_TTL": "0"}).auth_cache_ttl == 0
    assert Settings.from_env({"KKMTRANSFER_AUTH_CACHE_TTL": "2.5"}).auth_cache_ttl == 2.5
    for bad in ("-1", "soon", "nan", "86400"):
        with pytest.raises(ConfigError, match="KKMTRANSFER_AUTH_CACHE_TTL"):
            Settings.from_env({"KKMTRANSFER_AUTH_CACHE_TTL": bad})


# -- over HTTP, against the database -----------------------------------------------------------------

def served(engine, settings, ttl: float, clock: Clock):
    """An app with a credential cache of ``ttl`` seconds on ``clock``; the back office is another
    BillingService (as the CLI is another process): its changes reach the app only through the database."""
    billing = BillingService(engine, replace(settings, auth_cache_ttl=ttl))
    billing.credentials = CredentialCache(ttl, clock=clock)
    return billing, KKMTransferApp(billing, billing.settings)


def call(url, user=USER, password=PASSWORD, data=None):
    return requests.post(url, data=data or get_card(CARD), auth=(user, password), headers=HEADERS, timeout=30)


@pytest.fixture
def users_read(engine):
    """Counts the statements that read the users table."""
    seen = []

    def on_execute(conn, cursor, statement, *args):
        if "from users" in statement.lower():
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", on_execute)
    yield seen
    event.remove(engine, "before_cursor_execute", on_execute)


def test_a_disabled_user_is_refused_once_the_ttl_has_passed(ledger, db, engine, settings, users_read):
    clock = Clock()
    _, app = served(engine, settings, 5, clock)
    with running(app) as url:
        assert call(url).status_code == 200
        reads = len(users_read)
        assert call(url).status_code == 200 and len(users_read) == reads  # from the cache
        db.disable_user(USER)  # the back office, another service object: the app is not told
        clock.now += 4
        assert call(url).status_code == 200  # within the TTL: still the cached login (documented)
        clock.now += 1.01
        assert call(url).status_code == 401  # after it: the database says disabled
        assert call(url).status_code == 401


def test_with_ttl_zero_a_disabled_user_is_refused_at_once(ledger, db, engine, settings):
    clock = Clock()
    _, app = served(engine, settings, 0, clock)
    with running(app) as url:
        assert call(url).status_code == 200
        db.disable_user(USER)
        assert call(url).status_code == 401


def test_a_changed_password_is_refused_after_the_ttl_and_the_new_one_works_at_once(ledger, db, engine, settings):
    clock = Clock()
    _, app = served(engine, settings, 5, clock)
    new = "a-brand-new-password"
    with running(app) as url:
        assert call(url).status_code == 200
        db.add_user(USER, new)  # a password change
        assert call(url, password=new).status_code == 200  # not cached: checked against the database
        clock.now += 5.01
        assert call(url).status_code == 401


def test_the_same_service_forgets_a_user_it_disables(ledger, engine, settings):
    clock = Clock()
    billing, app = served(engine, settings, 60, clock)
    with running(app) as url:
        assert call(url).status_code == 200
        billing.disable_user(USER)
        assert call(url).status_code == 401


def test_a_wrong_password_never_authenticates_through_the_cache(ledger, engine, settings, monkeypatch):
    from kkmtransfer.service_layer import passwords

    clock = Clock()
    billing, _ = served(engine, settings, 60, clock)
    throttle = AuthThrottle(threshold=3, window=300, max_delay=300, clock=clock)
    app = KKMTransferApp(billing, billing.settings, throttle=throttle)
    slow = []
    real = passwords._verify_slow
    monkeypatch.setattr(passwords, "_verify_slow", lambda *a: slow.append(1) or real(*a))
    with running(app) as url:
        assert call(url).status_code == 200
        assert billing.credentials.get(USER, PASSWORD) is not None
        for wrong in (PASSWORD + " ", PASSWORD[:-1], PASSWORD.upper()):
            assert call(url, password=wrong).status_code == 401  # each one checked, and counted
        assert len(slow) == 4
        # three failures: throttled, the right (cached) password included, and no scrypt for any of them
        assert call(url).status_code == 429
        assert call(url, password="still-wrong").status_code == 429
        assert len(slow) == 4


def test_the_scope_comes_from_the_login_not_from_a_second_read(ledger, db, engine, settings, users_read):
    clock = Clock()
    _, app = served(engine, settings, 5, clock)
    db.add_user(USER, PASSWORD, kkms=["KKM-1"])
    with running(app) as url:
        assert call(url).status_code == 200  # the login is now cached with its binding
        reads = len(users_read)
        ok = reply_of(call(url, data=register_envelope()))
        assert (ok.status, ok.faultcode) == (200, None), ok.text
        assert len(users_read) == reads, "a sale of a cached login reads no users row"
        refused = reply_of(call(url, data=register_envelope(KKM="KKM-2")))
        assert refused.faultcode == "Client.ValidationError" and "KKM-1" in refused.faultstring
        # the binding changes: in force for this process once the TTL has passed
        db.add_user(USER, PASSWORD, kkms=["KKM-2"])
        clock.now += 5.01
        moved = reply_of(call(url, data=register_envelope(KKM="KKM-2")))
        assert (moved.status, moved.faultcode) == (200, None), moved.text
        refused = reply_of(call(url, data=register_envelope(KKM="KKM-1")))
        assert refused.faultcode == "Client.ValidationError"


# -- pooled connections after the database killed them -------------------------------------------------

def _kill_backends(pg_admin, database: str) -> int:
    """pg_terminate_backend on every session of ``database``, waiting until each has exited."""
    with pg_admin.connect() as conn:
        killed = conn.execute(text(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
            "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database}).scalar_one()
        for _ in range(100):
            left = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db "
                                     "AND pid <> pg_backend_pid()"), {"db": database}).scalar_one()
            if not left:
                break
            time.sleep(0.05)
    return killed


@pytest.mark.postgres
def test_requests_succeed_after_the_database_killed_every_pooled_connection(ledger, db, settings, request):
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("terminating backends: PostgreSQL")
    from sqlalchemy.engine import make_url

    from kkmtransfer.app import web_engine

    pg_admin = request.getfixturevalue("pg_admin")
    engine = web_engine(settings)  # the SOAP service's engine, as gunicorn's workers make it
    try:
        assert not engine.pool._pre_ping  # no round trip per checkout
        billing = BillingService(engine, replace(settings, auth_cache_ttl=0))  # every call uses the database
        with running(KKMTransferApp(billing, billing.settings)) as url:
            # fill the pool with several connections
            with engine.connect() as a, engine.connect() as b, engine.connect() as c:
                for conn in (a, b, c):
                    conn.execute(text("SELECT 1"))
            assert call(url).status_code == 200
            database = make_url(settings.database_url).database
            for round_ in range(2):
                assert _kill_backends(pg_admin, database) >= 1
                for _ in range(6):
                    answer = reply_of(call(url))
                    assert (answer.status, answer.faultcode) == (200, None), (round_, answer.text)
                    sale = reply_of(call(url, data=register_envelope()))
                    assert (sale.status, sale.faultcode) == (200, None), (round_, sale.text)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_connection_idle_for_long_is_pinged_before_use(db, settings, monkeypatch):
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL")
    from kkmtransfer.adapters import db as dbmod

    engine = dbmod.make_engine(settings.database_url)
    pings = []
    real = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda c: pings.append(1) or real(c))
    try:
        for _ in range(5):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        assert pings == []  # a connection used a moment ago: no ping
        monkeypatch.setattr(dbmod, "IDLE_PING_SECONDS", 0.0)
        time.sleep(0.01)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        assert pings == [1]
    finally:
        engine.dispose()


# -- one-statement reads without BEGIN/ROLLBACK ---------------------------------------------------------

@pytest.mark.postgres
def test_a_one_statement_read_leaves_no_autocommit_connection_in_the_pool(db, settings, engine):
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL")
    from kkmtransfer.domain import errors
    from kkmtransfer.service_layer.unit_of_work import UnitOfWork

    db.add_card_range(1, 1, prefix="555", width=7)
    engine.dispose()  # one pooled connection from here on: the one the read used
    statements = []

    def seen(_conn, _cursor, statement, *args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        db.card_info("5550000001")
        with pytest.raises(errors.CardNotFound):
            db.card_info("5559999999")
        assert [s.split()[0] for s in statements] == ["SELECT", "SELECT"]  # no BEGIN, no ROLLBACK
        with engine.connect() as conn:
            assert conn.connection.dbapi_connection.autocommit is False
        with UnitOfWork(engine, write=True) as uow:  # a writer that does not commit writes nothing
            uow.conn.execute(text("UPDATE cards SET holder = 'x' WHERE number = '5550000001'"))
        assert db.card_info("5550000001").holder != "x"
    finally:
        event.remove(engine, "before_cursor_execute", seen)


def test_a_reserve_and_its_cancel_take_the_scope_from_the_login(ledger, db, engine, settings, users_read):
    """ReserveBonus and CancelOperation check the KKM binding of the cached login, as RegisterOperation does:
    no users row read, another KKM refused, and a changed binding in force once the TTL has passed."""
    from .test_bad_input import envelope
    from .helpers import new_id

    def reserve(op_id, kkm):
        return envelope(f"<k:ReserveBonus><k:OperationId>{op_id}</k:OperationId><k:CardNumber>{CARD}</k:CardNumber>"
                        f"<k:KKM>{kkm}</k:KKM><k:Amount>1.00</k:Amount></k:ReserveBonus>")

    def cancel(op_id):
        return envelope(f"<k:CancelOperation><k:OperationId>{op_id}</k:OperationId></k:CancelOperation>")

    clock = Clock()
    _, app = served(engine, settings, 5, clock)
    db.add_user(USER, PASSWORD, kkms=["KKM-1"])
    with running(app) as url:
        assert call(url).status_code == 200  # the login is now cached with its binding
        held = new_id()
        assert (reply_of(call(url, data=reserve(new_id(), "KKM-1"))).faultcode) is None  # the namespace kept
        reads = len(users_read)
        ok = reply_of(call(url, data=reserve(held, "KKM-1")))
        assert (ok.status, ok.faultcode) == (200, None), ok.text
        refused = reply_of(call(url, data=reserve(new_id(), "KKM-2")))
        assert refused.faultcode == "Client.ValidationError" and "KKM-1" in refused.faultstring
        cancelled = reply_of(call(url, data=cancel(held)))
        assert (cancelled.status, cancelled.faultcode) == (200, None), cancelled.text
        assert len(users_read) == reads, "a reserve and a cancel of a cached login read no users row"
        db.add_user(USER, PASSWORD, kkms=["KKM-2"])
        clock.now += 5.01
        moved = reply_of(call(url, data=reserve(new_id(), "KKM-2")))
        assert (moved.status, moved.faultcode) == (200, None), moved.text
        assert reply_of(call(url, data=reserve(new_id(), "KKM-1"))).faultcode == "Client.ValidationError"
