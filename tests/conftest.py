"""Shared fixtures: the ledger on SQLite and on PostgreSQL, a real HTTP server, zeep clients.

Every test that takes ``db`` runs twice, once per backend. PostgreSQL is the machine's server
(127.0.0.1:5432, trust auth; override with KKMTRANSFER_TEST_PG_URL); a fresh database is created for the
session and dropped at the end. Tables are emptied before each test (the SOAP server runs in another
thread, so a rollback per test cannot be shared with it). When PostgreSQL is unreachable its tests are
skipped, except with CI=true, where they fail.
"""
from __future__ import annotations

import contextlib
import gc
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

import pytest
import requests
from sqlalchemy import text

from kkmtransfer.adapters.db import make_engine, metadata
from kkmtransfer.adapters.migrate import upgrade
from kkmtransfer.config import Settings
from kkmtransfer.service_layer.services import BillingService

from .helpers import assert_invariants

PG_URL = os.environ.get("KKMTRANSFER_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

USER, PASSWORD = "kassa-test", "test-password-1"


def unavailable(what: str, why: object):
    if IN_CI:
        pytest.fail(f"{what} is unreachable and CI=true: {why}", pytrace=False)
    pytest.skip(f"{what} is unreachable: {why}")


class Clock:
    """The server's clock for tests: real time unless a test sets it."""

    def __init__(self):
        self.fixed: datetime | None = None

    def __call__(self) -> datetime:
        return self.fixed or datetime.now(timezone.utc)

    def set(self, when: datetime) -> None:
        self.fixed = when


@pytest.fixture(scope="session")
def pg_admin():
    from sqlalchemy import create_engine

    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        engine.dispose()
        unavailable("PostgreSQL", exc)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_database_url(pg_admin):
    name = f"kkmtest_{uuid.uuid4().hex[:10]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    with pg_admin.connect() as conn:
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"),
            {"n": name})
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'kkm.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_database_url")
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def settings(database_url) -> Settings:
    # auth_cache_ttl=0: these tests change register users between and within tests, from other processes
    # too (the CLI), and expect the change at once; the credential cache has its own tests (test_auth_cache.py)
    return Settings(database_url=database_url, auth_cache_ttl=0)


@pytest.fixture(scope="session")
def engine(settings):
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def clock() -> Clock:
    return Clock()


def empty_tables(engine) -> None:
    names = [t.name for t in reversed(metadata.sorted_tables)]
    gc.collect()  # connections a test dropped without closing go back to the pool (their transaction ends)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # a transaction a test left open would make TRUNCATE wait for ever: fail the test instead
            conn.execute(text("SET LOCAL lock_timeout = '60s'"))
            conn.execute(text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE"))
        else:
            for name in names:
                conn.execute(text(f"DELETE FROM {name}"))


@pytest.fixture
def db(engine, settings, clock):
    """An empty ledger (per backend); the invariants are checked after the test."""
    clock.fixed = None
    empty_tables(engine)
    billing = BillingService(engine, settings, clock)
    yield billing
    clock.fixed = None
    assert_invariants(billing)


@pytest.fixture(scope="session")
def server(engine, settings, clock):
    """The WSGI app on a threaded HTTP server on a free loopback port; yields the endpoint URL."""
    from kkmtransfer.soap.devserver import make_server
    from kkmtransfer.soap.http import KKMTransferApp

    billing = BillingService(engine, settings, clock)
    httpd = make_server("127.0.0.1", 0, KKMTransferApp(billing, settings))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/KKMTransfer"
    httpd.shutdown()
    httpd.server_close()


def zeep_client(endpoint: str, user: str = USER, password: str = PASSWORD):
    from requests import Session
    from zeep import Client
    from zeep.transports import Transport

    session = Session()
    session.auth = (user, password)
    return Client(endpoint + "?wsdl", transport=Transport(session=session, timeout=30, operation_timeout=30))


@pytest.fixture
def soap(db, server):
    """A zeep client of a register user, against an empty ledger."""
    db.add_user(USER, PASSWORD)
    return zeep_client(server)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_gunicorn(args: list[str], env: dict, log, ready_url: str, timeout: float = 30):
    """``python -m gunicorn ARGS`` with its output in ``log``; yields once ``ready_url`` answers 200 (a
    loaded machine may answer late), fails the test with the log if it does not start, stops it after."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(ready_url, timeout=10).status_code == 200:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"gunicorn did not start:\n{log.read_text()}")
        time.sleep(0.2)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def gunicorn(database_url, tmp_path_factory):
    """`gunicorn kkmtransfer.wsgi:application` with 4 worker processes of 4 threads, on the test database."""
    port = free_port()
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=database_url)
    url = f"http://127.0.0.1:{port}/KKMTransfer"
    with running_gunicorn(["--workers", "4", "--threads", "4", "--bind", f"127.0.0.1:{port}",
             "--graceful-timeout", "2",
             # the tests build all their clients (each reads the WSDL on a kept-alive connection) before
             # they call at once: the default 2 s keep-alive would close those connections under the clients
             "--keep-alive", "120", "kkmtransfer.wsgi:application"], env, log, url + "?wsdl"):
        yield url


METRICS_USER, METRICS_PASSWORD = "prom", "scrape-secret-1"


@pytest.fixture(scope="session")
def gunicorn_metrics(database_url, tmp_path_factory):
    """gunicorn with contrib/gunicorn.conf.py (its multiprocess hooks), 2 workers of 2 threads, metrics in a
    PROMETHEUS_MULTIPROC_DIR of its own and Basic auth on /metrics. Yields (base URL, that directory)."""
    from pathlib import Path

    port = free_port()
    work = tmp_path_factory.mktemp("gunicorn-metrics")
    multiproc = work / "prometheus"
    log = work / "gunicorn.log"
    conf = Path(__file__).resolve().parent.parent / "contrib" / "gunicorn.conf.py"
    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=database_url, PROMETHEUS_MULTIPROC_DIR=str(multiproc),
               KKMTRANSFER_METRICS_USER=METRICS_USER, KKMTRANSFER_METRICS_PASSWORD=METRICS_PASSWORD)
    base = f"http://127.0.0.1:{port}"
    with running_gunicorn(["-c", str(conf), "--workers", "2", "--threads", "2",
             "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "2", "--access-logfile", "/dev/null",
             "kkmtransfer.wsgi:application"], env, log, base + "/KKMTransfer?wsdl"):
        yield base, multiproc
