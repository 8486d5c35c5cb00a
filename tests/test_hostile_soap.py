"""Hostile and unusual SOAP over real HTTP (issues 12 and 13): each test reproduces something that was
accepted, mis-answered or answered with an HTML page before, and checks that nothing was written."""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import requests
from lxml import etree

from kkmtransfer.config import Settings
from kkmtransfer.domain import errors
from kkmtransfer.domain.ledger import CardLedger
from kkmtransfer.domain.model import MAX_BALANCE, Lot, Measure
from kkmtransfer.service_layer.services import BillingService
from kkmtransfer.soap.devserver import make_server
from kkmtransfer.soap.http import KKMTransferApp

from .conftest import PASSWORD, USER
from .helpers import ISSUED, new_id, request
from .test_bad_input import (AUTH, CARD, HEADERS, NS, SOAP_ENV, envelope, get_card, ledger,  # noqa: F401
                             operation_exists, post, register, reply_of)

SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"


def running(app):
    """Serve ``app`` on a free loopback port; a context manager yielding the endpoint URL."""
    class _Ctx:
        def __enter__(self):
            self.httpd = make_server("127.0.0.1", 0, app)
            threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
            return f"http://127.0.0.1:{self.httpd.server_address[1]}/KKMTransfer"

        def __exit__(self, *exc):
            self.httpd.shutdown()
            self.httpd.server_close()

    return _Ctx()


# -- fault codes and strings ----------------------------------------------------------------------

def test_the_faultcode_is_a_qname_in_the_envelope_namespace(ledger, server):
    r = requests.post(server, data=get_card("0000000000"), auth=AUTH, headers=HEADERS, timeout=30)
    fault = etree.fromstring(r.content).find(f".//{{{SOAP_ENV}}}Fault/faultcode")
    prefix, _, local = fault.text.partition(":")
    assert local == "Client.CardNotFound" and fault.nsmap[prefix] == SOAP_ENV, fault.text


@pytest.mark.parametrize("fields, expected", [
    (dict(ReceiptSum="-100"), "ReceiptSum: must be ≥ 0, got -100"),
    (dict(KKM=None), "KKM: required"),
    (dict(BonusSpent="1.005"), "BonusSpent: at most 2 fraction digits"),
    (dict(Kind="Refund"), "Kind: must be one of Return, Sale, got 'Refund'"),
    (dict(KKM=""), "KKM: must not be empty"),
    (dict(ReceiptCountDelta="99999999999"), "ReceiptCountDelta: must be an xs:int"),
], ids=["negative", "missing", "fraction-digits", "enum", "empty", "int-range"])
def test_fault_strings_name_the_element_and_the_rule(ledger, server, fields, expected):
    op_id = new_id()
    reply = post(server, register(OperationId=op_id, **fields))
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    assert reply.faultstring.startswith(expected), reply.faultstring
    ledger(op_id)


# -- the envelope -------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", ["", "   ", "<!-- nothing -->"], ids=["empty", "blank", "comment"])
def test_an_empty_body_is_a_validation_fault(ledger, server, body):
    reply = post(server, envelope(body))
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    assert reply.faultstring.startswith("Body: required")
    ledger()


def test_a_soap12_envelope_gets_version_mismatch(ledger, server):
    data = (f'<e:Envelope xmlns:e="{SOAP12_ENV}" xmlns:k="{NS}"><e:Body><k:GetCardInfo>'
            f'<k:CardNumber>{CARD}</k:CardNumber></k:GetCardInfo></e:Body></e:Envelope>').encode()
    r = requests.post(server, data=data, auth=AUTH, headers={"Content-Type": "application/soap+xml"}, timeout=30)
    reply = reply_of(r)  # a SOAP 1.1 fault
    assert (reply.status, reply.faultcode) == (500, "VersionMismatch"), reply.text
    ledger()


@pytest.mark.parametrize("must, applied", [("1", False), ("true", False), ("0", True)])
def test_a_header_entry_that_must_be_understood_is_refused(ledger, db, server, must, applied):
    op_id = new_id()
    data = register(OperationId=op_id).replace(
        b"<s:Body>", f'<s:Header><t:Tx xmlns:t="urn:other" s:mustUnderstand="{must}">1</t:Tx></s:Header>'
                     f'<s:Body>'.encode())
    reply = post(server, data)
    if applied:
        assert (reply.status, reply.faultcode) == (200, None), reply.text
        assert operation_exists(db, op_id)
    else:
        assert (reply.status, reply.faultcode) == (500, "MustUnderstand"), reply.text
        ledger(op_id)


def test_two_operations_in_one_body_are_refused(ledger, server):
    first, second = new_id(), new_id()
    one = register(OperationId=first).split(b"<s:Body>")[1].split(b"</s:Body>")[0]
    two = register(OperationId=second).split(b"<s:Body>")[1].split(b"</s:Body>")[0]
    reply = post(server, envelope((one + two).decode()))
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    assert "exactly one operation" in reply.faultstring
    ledger(first, second)


@pytest.mark.parametrize("where", ["operation", "child"])
def test_elements_without_the_namespace_are_refused(ledger, server, where):
    op_id = new_id()
    if where == "operation":
        data = envelope(f'<GetCardInfo><CardNumber>{CARD}</CardNumber></GetCardInfo>')
    else:
        data = register(OperationId=op_id).replace(b"<k:KKM>KKM-1</k:KKM>", b'<KKM xmlns="">KKM-1</KKM>')
    reply = post(server, data)
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    assert "namespace" in reply.faultstring
    ledger(op_id)


def test_xsi_type_on_simple_elements_is_accepted_when_the_value_fits(ledger, db, server):
    """SOAP::Lite writes xsi:type on every value."""
    xsi = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
    op_id = new_id()
    data = register(OperationId=op_id, ReceiptSum="100.00", ReceiptCountDelta="1").replace(
        b"<k:ReceiptSum>", f'<k:ReceiptSum {xsi} xsi:type="xsd:decimal">'.encode()).replace(
        b"<k:ReceiptCountDelta>", f'<k:ReceiptCountDelta {xsi} xsi:type="xsd:long">'.encode()).replace(
        b"<k:KKM>", f'<k:KKM {xsi} xsi:type="xsd:string">'.encode())
    reply = post(server, data)
    assert (reply.status, reply.faultcode) == (200, None), reply.text
    assert operation_exists(db, op_id)
    bad = new_id()
    reply = post(server, register(OperationId=bad, ReceiptSum="-1.00").replace(
        b"<k:ReceiptSum>", f'<k:ReceiptSum {xsi} xsi:type="xsd:decimal">'.encode()))
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    assert not operation_exists(db, bad)


# -- values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("ReceiptSum", "1E2"), ("ReceiptSum", "5_000.00"), ("ReceiptSum", "١٠٠"), ("ReceiptSum", "１００"),
    ("BonusSpent", "1e0"), ("ReceiptCountDelta", "１"), ("ReceiptCountDelta", "1_0"),
    ("OperationTime", "２026-11-23T10:00:00+03:00"),
], ids=["exponent", "underscore", "arabic-indic", "full-width", "exponent-spent", "int-full-width",
        "int-underscore", "time-full-width"])
def test_only_the_xml_schema_lexical_forms_are_numbers(ledger, server, field, value):
    op_id = new_id()
    reply = post(server, register(OperationId=op_id, **{field: value}))
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    assert reply.faultstring.startswith(f"{field}: must be an xs:"), reply.faultstring
    ledger(op_id)


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00+03:00", "future"])
def test_out_of_range_and_implausible_operation_times_are_validation_faults(ledger, server, when):
    if when == "future":
        when = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat(timespec="seconds")
    op_id = new_id()
    reply = post(server, register(OperationId=op_id, OperationTime=when))
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    assert reply.faultstring.startswith("OperationTime:"), reply.faultstring
    ledger(op_id)


def test_a_receipt_an_hour_ahead_is_still_accepted(ledger, db, server):
    op_id = new_id()
    when = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat(timespec="seconds")
    reply = post(server, register(OperationId=op_id, OperationTime=when))
    assert (reply.status, reply.faultcode) == (200, None), reply.text


def history(card, date_from="2026-01-01", date_to="2026-12-31", extra=""):
    return envelope(f"<k:GetCardOperations><k:CardNumber>{card}</k:CardNumber><k:DateFrom>{date_from}"
                    f"</k:DateFrom><k:DateTo>{date_to}</k:DateTo>{extra}</k:GetCardOperations>")


def test_history_over_the_whole_calendar_is_a_validation_fault(ledger, server):
    reply = post(server, history(CARD, "0001-01-01", "9999-12-31"))
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    ledger()


# -- paging ---------------------------------------------------------------------------------------

def test_history_pages_with_max_records_and_after(db, soap):
    db.add_card_range(1, 1, prefix="555", width=7, issued=ISSUED)
    card = "5550000001"
    base = datetime.now(timezone.utc) - timedelta(hours=5)
    ids = [new_id() for _ in range(7)]
    for i, op_id in enumerate(ids):  # two share a time: the order then is created_at, id
        db.register_operation(request(card, op_id=op_id, time=base + timedelta(minutes=i // 2 * 10)))
    day_from, day_to = (base - timedelta(days=1)).date(), (base + timedelta(days=1)).date()
    everything = [r.OperationId for r in soap.service.GetCardOperations(card, day_from, day_to)]
    assert sorted(everything) == sorted(ids)
    pages, after = [], None
    while True:
        page = soap.service.GetCardOperations(card, day_from, day_to, MaxRecords=3, After=after)
        if not page:
            break
        assert len(page) <= 3
        pages.append([r.OperationId for r in page])
        after = page[-1].OperationId
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sum(pages, []) == everything
    from zeep.exceptions import Fault
    for bad in (dict(MaxRecords=0), dict(MaxRecords=1001), dict(After=new_id())):
        with pytest.raises(Fault) as exc:
            soap.service.GetCardOperations(card, day_from, day_to, **bad)
        assert exc.value.code.split(":")[-1] == "Client.ValidationError", bad


def test_history_defaults_to_at_most_1000_records(db, soap):
    db.add_card_range(1, 1, prefix="556", width=7, issued=ISSUED)
    card = "5560000001"
    when = datetime.now(timezone.utc) - timedelta(hours=1)
    from kkmtransfer.domain.model import Source
    for _ in range(1003):
        db.register_operation(request(card, receipt_sum="1.00", time=when), Source.OFFLINE)
    day = when.date()
    assert len(soap.service.GetCardOperations(card, day - timedelta(days=1), day + timedelta(days=1))) == 1000


# -- amounts ---------------------------------------------------------------------------------------

def test_the_ledger_refuses_a_credit_over_its_range():
    now = datetime.now(timezone.utc)
    lot = Lot(id=1, measure=Measure.BONUS, remaining=MAX_BALANCE - Decimal("10.00"), available_from=None,
              expires_at=None, exclusive=False)
    ledger_ = CardLedger([lot], now)
    ledger_.credit(Measure.BONUS, Decimal("10.00"))
    with pytest.raises(errors.ValidationError):
        ledger_.credit(Measure.BONUS, Decimal("0.01"))
    assert lot.remaining == MAX_BALANCE


def test_an_overflowing_sale_is_a_validation_fault_over_soap(ledger, db, server):
    from kkmtransfer.domain.model import MAX_AMOUNT
    db.add_card_range(9, 9, prefix="777", width=7, issued=ISSUED)
    card = "7770000009"
    with db.engine.begin() as conn:  # a card already near the ledger's limit (92,233 maximal sales)
        from sqlalchemy import update

        from kkmtransfer.adapters.db import lots
        db.register_operation(request(card, receipt_sum="1.00", accrued="1.00"))
        conn.execute(update(lots).where(lots.c.card_number == card, lots.c.measure == "accumulation")
                     .values(remaining=MAX_BALANCE - MAX_AMOUNT + Decimal("1")))
    op_id = new_id()
    reply = post(server, register(OperationId=op_id, CardNumber=card, ReceiptSum=str(MAX_AMOUNT),
                                  BonusAccrued="0.00", BonusSpent="0.00"))
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    assert not operation_exists(db, op_id)
    with db.engine.begin() as conn:  # back to a consistent ledger for the invariants check
        conn.execute(update(lots).where(lots.c.card_number == card, lots.c.measure == "accumulation")
                     .values(remaining=Decimal("1.00")))


# -- the WSDL address ---------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ['a" injected="yes', 'a"x', "a b", "a/b", "<x>"])
def test_a_host_header_that_is_not_a_host_is_refused(server, host):
    r = requests.get(server + "?wsdl", headers={"Host": host}, timeout=10)
    assert r.status_code == 400, r.text[:300]
    assert "injected" not in r.text


def test_the_public_url_setting_wins(engine, settings):
    public = Settings(database_url=settings.database_url, public_url="https://kkm.example.org/api")
    app = KKMTransferApp(BillingService(engine, public), public)
    with running(app) as url:
        r = requests.get(url + "?wsdl", headers={"Host": 'evil" x="1'}, timeout=10)
    loc = next(etree.fromstring(r.content).iter("{http://schemas.xmlsoap.org/wsdl/soap/}address"))
    assert loc.get("location") == "https://kkm.example.org/api/KKMTransfer"


# -- bounded work -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["attributes", "elements"])
def test_documents_with_too_many_attributes_or_elements_are_refused_fast(ledger, server, kind):
    if kind == "attributes":  # 60,000 attributes in under 1 MiB: 6-12 s of CPU in spyne before
        attrs = " ".join(f"a{i}=''" for i in range(60_000))
        data = envelope(f"<k:GetCardInfo {attrs}><k:CardNumber>{CARD}</k:CardNumber></k:GetCardInfo>")
    else:
        data = envelope(f"<k:GetCardInfo><k:CardNumber>{CARD}</k:CardNumber>{'<k:x/>' * 60_000}</k:GetCardInfo>")
    assert len(data) < 1024 * 1024
    started = time.monotonic()
    reply = post(server, data)
    elapsed = time.monotonic() - started
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text[:300]
    assert "limit" in reply.faultstring and elapsed < 2, elapsed
    ledger()


# -- logs -------------------------------------------------------------------------------------------

def test_what_comes_from_the_wire_cannot_forge_log_lines(ledger, server, caplog):
    forged = "kassa\n2026-11-29 10:00:00,000 INFO kkmtransfer.http: request 0: admin logged in"
    with caplog.at_level(logging.DEBUG):
        requests.post(server, data=get_card(CARD), auth=(forged, "x" * 12), headers=HEADERS, timeout=30)
        requests.post(server, data=b"<" + b"x" * 500_000 + b"\n>", auth=AUTH, headers=HEADERS, timeout=30)
    for rec in caplog.records:
        message = rec.getMessage()
        assert "\n" not in message, message[:300]
        assert len(message) < 5000, (rec.name, len(message))
    assert any("kassa\\n2026" in rec.getMessage() for rec in caplog.records)
    ledger()


# -- login throttling -------------------------------------------------------------------------------

def test_failed_logins_are_throttled_without_running_scrypt(db, engine, settings, monkeypatch):
    from kkmtransfer.service_layer import passwords

    db.add_user(USER, PASSWORD)
    db.add_user("kassa-other", PASSWORD)
    from kkmtransfer.soap.throttle import AuthThrottle

    now = [1000.0]  # the throttle's clock stands still until the test moves it
    app = KKMTransferApp(BillingService(engine, settings), settings,
                         throttle=AuthThrottle(threshold=5, window=300, max_delay=300, clock=lambda: now[0]))
    slow = []
    real = passwords._verify_slow
    monkeypatch.setattr(passwords, "_verify_slow", lambda *a: slow.append(1) or real(*a))
    with running(app) as url:
        def call(user, password):
            return requests.post(url, data=get_card("0000000000"), auth=(user, password), headers=HEADERS,
                                 timeout=30)

        statuses = [call(USER, f"wrong-{i}-password").status_code for i in range(5)]
        assert statuses == [401] * 5
        ran = len(slow)
        refused = [call(USER, "wrong-again-pass") for _ in range(20)]
        assert {r.status_code for r in refused} == {429}
        assert int(refused[0].headers["Retry-After"]) >= 1
        assert len(slow) == ran, "a throttled login must not run scrypt"
        # the right password is refused too while the block lasts (the attacker cannot tell)
        assert call(USER, PASSWORD).status_code == 429
        # the address is blocked too: another name from the same address
        assert call("kassa-other", PASSWORD).status_code == 429
        # behind a trusted proxy the address is the forwarded one: another client is not blocked
        other = requests.post(url, data=get_card("0000000000"), auth=("kassa-other", PASSWORD),
                              headers={**HEADERS, "X-Forwarded-For": "10.1.2.3"}, timeout=30)
        assert other.status_code == 500 and "Client.CardNotFound" in other.text
        now[0] += float(refused[-1].headers["Retry-After"])
        ok = call(USER, PASSWORD)
        assert ok.status_code == 500 and "Client.CardNotFound" in ok.text  # logged in: a SOAP answer


def test_throttling_is_thread_safe_and_exponential():
    from kkmtransfer.soap.throttle import AuthThrottle

    now = [0.0]
    t = AuthThrottle(threshold=5, window=300, max_delay=60, clock=lambda: now[0])
    threads = [threading.Thread(target=lambda: [t.failure("u", None) for _ in range(100)]) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert t._records[("user", "u")].failures == 800
    assert t.retry_after("u", None) == 60  # capped
    t2 = AuthThrottle(threshold=5, window=300, max_delay=300, clock=lambda: now[0])
    waits = []
    for _ in range(8):
        t2.failure(None, "10.0.0.1")
        waits.append(t2.retry_after(None, "10.0.0.1"))
    assert waits == [0, 0, 0, 0, 1, 2, 4, 8]
    t2.success("someone")
    assert t2.retry_after(None, "10.0.0.1") == 8


def test_an_address_block_spares_users_who_logged_in_from_it_but_not_their_own_failures():
    """A store's registers behind one NAT address keep working while something there guesses passwords."""
    from kkmtransfer.soap.throttle import AuthThrottle

    now = [0.0]
    t = AuthThrottle(threshold=5, window=300, max_delay=300, clock=lambda: now[0])
    t.success("kassa1", "10.0.0.1")
    for i in range(7):
        t.failure(f"guess{i}", "10.0.0.1")
    assert t.retry_after("kassa1", "10.0.0.1") == 0          # known here: not stopped by the address
    assert t.retry_after("kassa2", "10.0.0.1") == 4          # never logged in from there: blocked
    assert t.retry_after("kassa1", "10.0.0.2") == 0
    for _ in range(5):
        t.failure("kassa1", "10.0.0.1")
    assert t.retry_after("kassa1", "10.0.0.1") == 1          # its own failures still count
    now[0] = 400.0                                           # the success is older than the window
    for i in range(5):
        t.failure(f"later{i}", "10.0.0.1")
    assert t.retry_after("kassa1", "10.0.0.1") == 1          # no longer known there: the address block holds


def test_new_passwords_are_at_least_12_characters(db):
    with pytest.raises(errors.ValidationError):
        db.add_user("kassa-short", "eleven-char")
    assert db.add_user("kassa-long", "twelve-chars")


# -- database outage ----------------------------------------------------------------------------------

class TcpProxy:
    """A threaded TCP forwarder on loopback between the service and PostgreSQL that a test cuts (open
    connections reset, new ones refused) and restores."""

    def __init__(self, target_port: int):
        import socket

        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.closed = False
        self.lock = threading.Lock()
        self.pairs: set = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket

        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=3)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = (client, upstream)
            with self.lock:
                self.pairs.add(pair)
            threading.Thread(target=self._pump, args=(client, upstream, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, pair), daemon=True).start()

    def _pump(self, src, dst, pair):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(pair)

    def _close(self, pair):
        import socket

        with self.lock:
            self.pairs.discard(pair)
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self):
        self.up.clear()
        with self.lock:
            pairs = list(self.pairs)
        for pair in pairs:
            self._close(pair)

    def restore(self):
        self.up.set()

    def close(self):
        self.closed = True
        self.cut()
        self.listener.close()


def soap_answer(r):
    """(outcome, request id) of one RegisterOperation answer: 'Applied'/'AlreadyApplied' or 'Server'."""
    assert r.headers.get("Content-Type", "").startswith("text/xml"), (r.status_code, r.text[:300])
    request_id = r.headers["X-Request-Id"]
    reply = reply_of(r)
    if r.status_code == 200:
        return etree.fromstring(r.content).findtext(f".//{{{NS}}}Status"), request_id
    assert (r.status_code, reply.faultcode) == (500, "Server"), r.text[:500]
    assert request_id in reply.faultstring, reply.faultstring
    return "Server", request_id


@pytest.mark.postgres
def test_a_database_outage_is_answered_in_soap_and_the_service_recovers_by_itself(pg_database_url, tmp_path):
    """gunicorn started while the database is unreachable comes up and answers Server faults; cut and
    restored under load, every answer is a SOAP envelope with a request id, and every receipt a register
    retried until it was applied is applied exactly once."""
    import os
    import subprocess
    import sys

    from sqlalchemy import func, select
    from sqlalchemy.engine import make_url

    from kkmtransfer.adapters.db import make_engine, operations
    from kkmtransfer.adapters.migrate import upgrade

    from .conftest import empty_tables, free_port
    from .helpers import assert_invariants

    upgrade(pg_database_url)
    direct = make_engine(pg_database_url)
    settings = Settings(database_url=pg_database_url)
    billing = BillingService(direct, settings)
    empty_tables(direct)
    billing.add_user(USER, PASSWORD)
    billing.add_card_range(1, 1, prefix="888", width=7, issued=ISSUED)
    card = "8880000001"

    url = make_url(pg_database_url)
    proxy = TcpProxy(url.port or 5432)
    proxy.cut()  # the database is down when the service starts
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=proxied, KKMTRANSFER_DB_CONNECT_TIMEOUT="2",
               KKMTRANSFER_DB_STATEMENT_TIMEOUT="3")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", "2", "--threads", "4",
                                 "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "2",
                                 "kkmtransfer.wsgi:application"], env=env, stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}/KKMTransfer"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(endpoint + "?wsdl", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

        # down at start: Server faults, fast
        for _ in range(3):
            started = time.monotonic()
            r = requests.post(endpoint, data=register(OperationId=new_id(), CardNumber=card), auth=AUTH,
                              headers=HEADERS, timeout=30)
            assert soap_answer(r)[0] == "Server"
            assert time.monotonic() - started < 10

        proxy.restore()
        deadline = time.monotonic() + 20
        while True:  # recovers by itself
            r = requests.post(endpoint, data=get_card(card), auth=AUTH, headers=HEADERS, timeout=30)
            if r.status_code == 200:
                break
            soap_answer(r)
            assert time.monotonic() < deadline, "the service did not recover"
            time.sleep(0.5)

        # under load: registers retry each receipt with the same id until it is applied
        stop = threading.Event()
        outcomes: list[tuple[str, str]] = []
        problems: list[str] = []
        applied: dict[str, str] = {}
        lock = threading.Lock()

        def register_loop(n):
            session = requests.Session()
            while not stop.is_set():
                op_id = new_id()
                while True:
                    try:
                        r = session.post(endpoint, data=register(OperationId=op_id, CardNumber=card,
                                                                 ReceiptSum="10.00", BonusAccrued="1.00",
                                                                 BonusSpent="0.00"),
                                         auth=AUTH, headers=HEADERS, timeout=30)
                        outcome, rid = soap_answer(r)
                    except Exception as exc:  # noqa: BLE001 - reported below
                        with lock:
                            problems.append(repr(exc)[:300])
                        return
                    with lock:
                        outcomes.append((outcome, rid))
                    if outcome in ("Applied", "AlreadyApplied"):
                        with lock:
                            applied[op_id] = outcome
                        break
                    time.sleep(0.05)

        threads = [threading.Thread(target=register_loop, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        for _ in range(2):
            proxy.cut()
            time.sleep(3)
            proxy.restore()
            time.sleep(3)
        stop.set()
        for t in threads:
            t.join(60)
        assert not problems, problems[:5]
        kinds = {o for o, _ in outcomes}
        assert "Server" in kinds and "Applied" in kinds, kinds
        assert len({rid for _, rid in outcomes}) == len(outcomes), "request ids must be unique"

        with direct.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(operations)
                                  .where(operations.c.card_number == card)).scalar_one()
        assert stored == len(applied), (stored, len(applied))  # nothing lost, nothing doubled
        assert billing.card_info(card).balances.bonus == Decimal("1.00") * len(applied)
        assert_invariants(billing)
        # the operator's log: one line for each request the outage failed, no traceback
        text = log.read_text(errors="replace")
        assert "the database is unavailable" in text, text[-3000:]
        assert "Traceback" not in text, text[text.index("Traceback") - 500:][:3000]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        proxy.close()
        empty_tables(direct)
        direct.dispose()


def test_a_black_holed_database_gives_a_fast_server_fault(tmp_path):
    """A database host that accepts the connection and never answers: the connect timeout ends it."""
    import socket

    from kkmtransfer.app import create_wsgi_app

    hole = socket.create_server(("127.0.0.1", 0))
    held = []
    threading.Thread(target=lambda: [held.append(hole.accept()) for _ in range(50)], daemon=True).start()
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{hole.getsockname()[1]}/nothing"
    app = create_wsgi_app(Settings(database_url=url, db_connect_timeout=1))
    try:
        with running(app) as endpoint:
            started = time.monotonic()
            r = requests.post(endpoint, data=get_card(CARD), auth=AUTH, headers=HEADERS, timeout=30)
            elapsed = time.monotonic() - started
    finally:
        hole.close()
    assert soap_answer(r)[0] == "Server"
    assert elapsed < 5, elapsed


def test_the_wsgi_module_imports_while_the_database_is_down():
    import os
    import subprocess
    import sys

    env = dict(os.environ, KKMTRANSFER_DATABASE_URL="postgresql+psycopg2://postgres@127.0.0.1:1/none")
    proc = subprocess.run([sys.executable, "-c", "import kkmtransfer.wsgi as w; print(type(w.application.app).__name__)"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "KKMTransferApp" in proc.stdout, proc.stderr[-2000:]
