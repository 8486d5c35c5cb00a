"""Bad input over real HTTP: every refusal carries the contract's fault code (or HTTP status) and writes nothing.

Raw SOAP envelopes are posted with ``requests`` because zeep cannot produce most of these documents.
"""
from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import NamedTuple

import pytest
import requests
from lxml import etree
from sqlalchemy import func, select

from kkmtransfer.adapters.db import operations
from kkmtransfer.domain.model import CardStatus

from .conftest import PASSWORD, USER
from .helpers import ISSUED, new_id, request

NS = "urn:kkmtransfer:1"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
AUTH = (USER, PASSWORD)
CARD, BLOCKED = "7770000001", "7770000002"
HEADERS = {"Content-Type": "text/xml; charset=utf-8"}

# -- helpers ----------------------------------------------------------------------------------------

def envelope(body: str, prolog: str = "") -> bytes:
    """A SOAP 1.1 envelope around ``body`` (``k:`` is our namespace); ``prolog`` goes before the root."""
    return (f'<?xml version="1.0" encoding="utf-8"?>{prolog}'
            f'<s:Envelope xmlns:s="{SOAP_ENV}" xmlns:k="{NS}"><s:Body>{body}</s:Body></s:Envelope>').encode()


class Reply(NamedTuple):
    status: int
    faultcode: str | None
    faultstring: str | None
    text: str


def post(url: str, data, auth=AUTH, timeout: float = 30) -> Reply:
    """POST ``data`` and extract the HTTP status and, when the answer is a SOAP fault, its code and string."""
    r = requests.post(url, data=data, auth=auth, headers=HEADERS, timeout=timeout)
    return reply_of(r)


def fault_qname(fault) -> str:
    """The faultcode's local part, after checking it is a QName in the SOAP envelope namespace."""
    raw = fault.findtext("faultcode").strip()
    prefix, sep, local = raw.partition(":")
    assert sep and fault.find("faultcode").nsmap.get(prefix) == SOAP_ENV, f"faultcode {raw!r} is not soap:…"
    return local


def reply_of(r) -> Reply:
    code = string = None
    if r.content.lstrip().startswith(b"<"):
        root = etree.fromstring(r.content)
        fault = root.find(f".//{{{SOAP_ENV}}}Fault")
        if fault is not None:
            code, string = fault_qname(fault), fault.findtext("faultstring")
    return Reply(r.status_code, code, string, r.text)


def get_card(card: str) -> bytes:
    return envelope(f"<k:GetCardInfo><k:CardNumber>{card}</k:CardNumber></k:GetCardInfo>")


def register(prolog: str = "", **fields) -> bytes:
    """A RegisterOperation envelope: a valid 100.00 Sale on CARD accruing 5.00 and spending 1.00, unless
    ``fields`` say otherwise (values go in verbatim; None leaves the element out)."""
    op = dict(OperationId=new_id(), CardNumber=CARD, KKM="KKM-1", OperationTime="2026-11-23T10:00:00+03:00",
              Kind="Sale", ReceiptSum="100.00", BonusAccrued="5.00", BonusSpent="1.00",
              OriginalOperationId=None)
    op.update(fields)
    inner = "".join(f"<k:{name}>{value}</k:{name}>" for name, value in op.items() if value is not None)
    return envelope(f"<k:RegisterOperation><k:Operation>{inner}</k:Operation></k:RegisterOperation>", prolog)


def operation_count(db) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(operations)).scalar_one()


def operation_exists(db, op_id: str) -> bool:
    with db.engine.connect() as conn:
        return conn.execute(select(operations.c.id).where(operations.c.id == op_id)).first() is not None


@pytest.fixture
def ledger(db, server):
    """A register user, an active CARD with 50.00 bonus (one Sale) and a BLOCKED card.

    Yields a function asserting that nothing has been written since (balances and operation count)."""
    db.add_user(USER, PASSWORD)
    db.add_card_range(1, 2, prefix="777", width=7, holder="Test Holder", issued=ISSUED)
    db.register_operation(request(CARD, receipt_sum="500.00", accrued="50.00"))
    db.set_card_status(BLOCKED, CardStatus.BLOCKED)
    before = {n: db.card_info(n) for n in (CARD, BLOCKED)}
    count = operation_count(db)

    def nothing_written(*op_ids: str) -> None:
        assert {n: db.card_info(n) for n in (CARD, BLOCKED)} == before
        assert operation_count(db) == count
        for op_id in op_ids:
            assert not operation_exists(db, op_id)

    assert before[CARD].balances.bonus == Decimal("50.00")
    return nothing_written


def test_a_valid_raw_envelope_is_applied(ledger, db, server):
    """The control case: the envelope the bad cases below derive from is a good one."""
    op_id = new_id()
    reply = post(server, register(OperationId=op_id))
    assert (reply.status, reply.faultcode) == (200, None), reply.text
    assert operation_exists(db, op_id)
    assert db.card_info(CARD).balances.bonus == Decimal("54.00")


# -- 1. malformed XML ------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    pytest.param(register()[:-30], id="truncated"),
    pytest.param(register().replace(b"</k:KKM>", b"</k:Kkm>"), id="mismatched-tag"),
    pytest.param(b"this is not XML at all", id="not-xml"),
    pytest.param(b"", id="empty"),
])
def test_malformed_xml_is_a_validation_error(ledger, server, data):
    reply = post(server, data)
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    ledger()


# -- 2.-4. schema and value violations in Operation -------------------------------------------------

@pytest.mark.parametrize("fields", [
    pytest.param(dict(OperationId=None), id="no-OperationId"),
    pytest.param(dict(CardNumber=None), id="no-CardNumber"),
    pytest.param(dict(KKM=None), id="no-KKM"),
    pytest.param(dict(OperationTime=None), id="no-OperationTime"),
    pytest.param(dict(Kind=None), id="no-Kind"),
    pytest.param(dict(ReceiptSum=None), id="no-ReceiptSum"),
    pytest.param(dict(ReceiptSum="12a.00"), id="non-numeric-ReceiptSum"),
    pytest.param(dict(ReceiptSum=""), id="empty-ReceiptSum"),
    pytest.param(dict(ReceiptSum="Infinity"), id="Infinity-ReceiptSum"),
    pytest.param(dict(ReceiptSum="NaN"), id="NaN-ReceiptSum"),
    pytest.param(dict(BonusSpent="NaN"), id="NaN-BonusSpent"),
    pytest.param(dict(AccumulationDelta="NaN"), id="NaN-AccumulationDelta"),
    pytest.param(dict(ReceiptSum="9999999999999.00"), id="ReceiptSum-over-the-maximum"),
    pytest.param(dict(ReceiptSum="1" + "0" * 27 + ".00"), id="ReceiptSum-28-integer-digits"),
    pytest.param(dict(Kind="Refund"), id="unknown-Kind"),
    pytest.param(dict(BonusSpent="1.005"), id="3-fraction-digits-BonusSpent"),
    pytest.param(dict(OperationId="not-a-guid"), id="OperationId-not-a-GUID"),
    pytest.param(dict(OperationTime="23.11.2026 10:00"), id="OperationTime-not-a-dateTime"),
    pytest.param(dict(OperationTime="2026-11-23T10:00:00"), id="OperationTime-without-offset"),
    pytest.param(dict(OperationTime="2026-02-30T10:00:00+03:00"), id="OperationTime-February-30"),
    pytest.param(dict(OperationTime="2026-11-23T25:00:00+03:00"), id="OperationTime-hour-25"),
    pytest.param(dict(OperationTime="2026-11-23T10:00:00+25:00"), id="OperationTime-offset-25h"),
    pytest.param(dict(CardNumber="7" * 33), id="CardNumber-over-32-characters"),
    pytest.param(dict(KKM=""), id="empty-KKM"),
    pytest.param(dict(ReceiptCountDelta="99999999999"), id="ReceiptCountDelta-over-int32"),
    pytest.param(dict(ReceiptSum="-100.00"), id="negative-ReceiptSum"),
    pytest.param(dict(BonusAccrued="-5.00"), id="negative-BonusAccrued"),
    pytest.param(dict(BonusSpent="-1.00"), id="negative-BonusSpent"),
    pytest.param(dict(ReceiptCountDelta="1.5"), id="fractional-ReceiptCountDelta"),
    pytest.param(dict(OriginalOperationId=str(uuid.uuid4())), id="OriginalOperationId-on-a-Sale"),
])
def test_operation_schema_and_value_violations(ledger, server, fields):
    op_id = fields.get("OperationId") or new_id()
    reply = post(server, register(**{"OperationId": op_id, **fields}))
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    ledger(op_id)


def test_register_operation_without_operation_element(ledger, server):
    reply = post(server, envelope("<k:RegisterOperation/>"))
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    ledger()


# -- 5. unknown and blocked cards -------------------------------------------------------------------

def test_get_card_info_of_an_unknown_card(ledger, server):
    reply = post(server, get_card("0000000000"))
    assert (reply.status, reply.faultcode) == (500, "Client.CardNotFound"), reply.text
    ledger()


def test_register_operation_on_an_unknown_card(ledger, server):
    op_id = new_id()
    reply = post(server, register(OperationId=op_id, CardNumber="0000000000"))
    assert (reply.status, reply.faultcode) == (500, "Client.CardNotFound"), reply.text
    ledger(op_id)


def test_a_blocked_card_can_be_read(ledger, server):
    reply = post(server, get_card(BLOCKED))
    assert (reply.status, reply.faultcode) == (200, None), reply.text
    root = etree.fromstring(reply.text.encode())
    assert root.findtext(f".//{{{NS}}}GetCardInfoResult/{{{NS}}}CardNumber") == BLOCKED
    assert root.findtext(f".//{{{NS}}}GetCardInfoResult/{{{NS}}}Status") == "Blocked"
    ledger()


def test_register_operation_on_a_blocked_card(ledger, server):
    op_id = new_id()
    reply = post(server, register(OperationId=op_id, CardNumber=BLOCKED, BonusSpent="0.00"))
    assert (reply.status, reply.faultcode) == (500, "Client.CardBlocked"), reply.text
    ledger(op_id)


# -- 6. entity tricks -------------------------------------------------------------------------------

XXE = '<!DOCTYPE s:Envelope [<!ENTITY e SYSTEM "file:///etc/passwd">]>'


def test_xxe_is_not_resolved(ledger, server):
    reply = post(server, envelope("<k:GetCardInfo><k:CardNumber>&e;</k:CardNumber></k:GetCardInfo>", XXE))
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    assert "root:" not in reply.text
    ledger()


def test_xxe_in_register_operation_is_not_resolved(ledger, server):
    op_id = new_id()
    reply = post(server, register(XXE, OperationId=op_id, CardNumber="&e;"))
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    assert "root:" not in reply.text
    ledger(op_id)


def test_billion_laughs_is_refused_quickly(ledger, server):
    entities = ['<!ENTITY l0 "lol">'] + [
        f'<!ENTITY l{i} "{("&l%d;" % (i - 1)) * 10}">' for i in range(1, 10)]
    prolog = f"<!DOCTYPE s:Envelope [{''.join(entities)}]>"
    started = time.monotonic()
    reply = post(server, envelope("<k:GetCardInfo><k:CardNumber>&l9;</k:CardNumber></k:GetCardInfo>", prolog),
                 timeout=10)
    elapsed = time.monotonic() - started
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text[:500]
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert "lollollol" not in reply.text
    after = post(server, get_card(CARD))
    assert (after.status, after.faultcode) == (200, None), after.text
    ledger()


# -- 7. size limit ----------------------------------------------------------------------------------

def oversized(settings) -> bytes:
    """A RegisterOperation whose Store is padded to about 1.5 times the limit (well-formed otherwise)."""
    data = register(Store="x" * (settings.max_request_bytes * 3 // 2))
    assert len(data) > settings.max_request_bytes
    return data


def test_a_body_over_the_limit_is_413(ledger, server, settings):
    assert settings.max_request_bytes == 1024 * 1024
    reply = post(server, oversized(settings))
    assert reply.status == 413, reply.text[:500]
    ledger()


def chunked(data: bytes, size: int = 64 * 1024):
    """A generator makes requests send Transfer-Encoding: chunked."""
    return (data[i:i + size] for i in range(0, len(data), size))


def test_chunked_bodies_under_gunicorn_are_read_and_limited(ledger, gunicorn, settings):
    reply = post(gunicorn, chunked(oversized(settings)))
    assert reply.status == 413, reply.text[:500]
    r = requests.post(gunicorn, data=chunked(get_card(CARD), 100), auth=AUTH, headers=HEADERS, timeout=10)
    assert r.status_code == 200 and CARD in r.text, r.text[:500]
    ledger()


def test_a_chunked_request_to_the_dev_server_is_refused_promptly(ledger, server):
    """The standard-library server does not decode chunked bodies: 411 at once rather than a hang."""
    r = requests.post(server, data=chunked(get_card(CARD), 100), auth=AUTH, headers=HEADERS, timeout=5)
    assert r.status_code == 411, r.text[:500]
    ledger()


# -- 8. authentication ------------------------------------------------------------------------------

@pytest.mark.parametrize("auth", [None, (USER, "wrong-password"), ("nobody", PASSWORD)],
                         ids=["no-credentials", "wrong-password", "unknown-user"])
@pytest.mark.parametrize("call", ["GetCardInfo", "RegisterOperation"])
def test_unauthenticated_calls_are_401(ledger, server, auth, call):
    op_id = new_id()
    data = get_card(CARD) if call == "GetCardInfo" else register(OperationId=op_id)
    r = requests.post(server, data=data, auth=auth, headers=HEADERS, timeout=30)
    assert r.status_code == 401, r.text
    assert r.headers["WWW-Authenticate"].lower().startswith("basic")
    assert CARD not in r.text
    ledger(op_id)


def test_the_wsdl_is_public(server):
    r = requests.get(server + "?wsdl", timeout=30)
    assert r.status_code == 200, r.text[:500]
    root = etree.fromstring(r.content)
    assert root.get("targetNamespace") == NS


# -- 9. returns -------------------------------------------------------------------------------------

def test_a_return_of_an_unknown_sale(ledger, server):
    op_id = new_id()
    reply = post(server, register(OperationId=op_id, Kind="Return", BonusAccrued="0.00", BonusSpent="0.00",
                                  OriginalOperationId=new_id()))
    assert (reply.status, reply.faultcode) == (500, "Client.OriginalNotFound"), reply.text
    ledger(op_id)


def test_a_return_without_original_operation_id(ledger, server):
    op_id = new_id()
    reply = post(server, register(OperationId=op_id, Kind="Return", BonusAccrued="0.00", BonusSpent="0.00"))
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    ledger(op_id)


# -- 10. unknown operation --------------------------------------------------------------------------

def test_an_unknown_soap_operation(ledger, server):
    reply = post(server, envelope("<k:NoSuchOperation/>"))
    assert (reply.status, reply.faultcode) == (500, "Client.ValidationError"), reply.text
    ledger()


# -- 11. routing ------------------------------------------------------------------------------------

def test_get_without_wsdl_is_405(server):
    r = requests.get(server, auth=AUTH, timeout=30)
    assert r.status_code == 405, r.text
    assert "POST" in r.headers["Allow"]


@pytest.mark.parametrize("path", ["/", "/Other", "/KKMTransfer/extra"])
def test_another_path_is_404(server, path):
    base = server.rsplit("/KKMTransfer", 1)[0]
    for method in (requests.get, requests.post):
        r = method(base + path, auth=AUTH, timeout=30)
        assert r.status_code == 404, (method, r.text)


# -- 12. an unexpected server error -----------------------------------------------------------------

def test_a_server_error_answers_server_with_a_request_id_and_no_traceback(ledger, engine, settings, caplog):
    """The client sees the fault code Server and the request id; the log has the traceback."""
    import threading

    from kkmtransfer.service_layer.services import BillingService
    from kkmtransfer.soap.devserver import make_server
    from kkmtransfer.soap.http import KKMTransferApp

    class Broken(BillingService):
        def card_info(self, number):
            raise RuntimeError("disk on fire: secret detail")

    httpd = make_server("127.0.0.1", 0, KKMTransferApp(Broken(engine, settings), settings))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/KKMTransfer"
        with caplog.at_level("ERROR", logger="kkmtransfer.soap"):
            r = requests.post(url, data=get_card(CARD), auth=AUTH, headers=HEADERS, timeout=30)
    finally:
        httpd.shutdown()
        httpd.server_close()
    fault = etree.fromstring(r.content).find(f".//{{{SOAP_ENV}}}Fault")
    request_id = r.headers["X-Request-Id"]
    assert r.status_code == 500 and fault_qname(fault) == "Server"
    assert request_id in r.text and "secret detail" not in r.text and "Traceback" not in r.text
    logged = [rec for rec in caplog.records if request_id in rec.getMessage()]
    assert logged and logged[0].exc_info is not None and "disk on fire" in str(logged[0].exc_info[1])
