"""The online benchmark's echo (kkmtransfer/soap/echo.py): mounted only on request, never in the contract."""
from __future__ import annotations

import threading

import pytest
import requests
from sqlalchemy import text

from kkmtransfer.soap.devserver import make_server
from kkmtransfer.soap.echo import ECHO_ENV, ECHO_PATH
from kkmtransfer.soap.http import KKMTransferApp

from .conftest import zeep_client

ECHO_BODY = ('<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:k="urn:kkmtransfer:1">'
             '<soap:Body><k:GetCardInfo><k:CardNumber>{card}</k:CardNumber></k:GetCardInfo></soap:Body>'
             '</soap:Envelope>')


@pytest.fixture
def serve(db, settings, monkeypatch):
    """Start the WSGI app with the environment as the test sets it; yields the base URL."""
    servers = []

    def start(echo: bool) -> str:
        if echo:
            monkeypatch.setenv(ECHO_ENV, "1")
        else:
            monkeypatch.delenv(ECHO_ENV, raising=False)
        httpd = make_server("127.0.0.1", 0, KKMTransferApp(db, settings))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_echo_is_not_served_unless_asked(serve):
    base = serve(echo=False)
    r = requests.post(base + ECHO_PATH, data=ECHO_BODY.format(card="X1"), timeout=10,
                      headers={"Content-Type": "text/xml"})
    assert r.status_code == 404
    assert r.headers["X-Request-Id"]


def test_echo_answers_a_card_info_without_the_database(serve, db):
    base = serve(echo=True)
    # the echo passes the same HTTP front as the endpoint: a register user's credentials are required
    r = requests.post(base + ECHO_PATH, data=ECHO_BODY.format(card="NO-SUCH-CARD"), timeout=10,
                      headers={"Content-Type": "text/xml"})
    assert r.status_code == 401
    db.add_user("echo-test", "echo-test-password")
    r = requests.post(base + ECHO_PATH, data=ECHO_BODY.format(card="NO-SUCH-CARD"), timeout=10,
                      headers={"Content-Type": "text/xml"}, auth=("echo-test", "echo-test-password"))
    assert r.status_code == 200, r.text
    assert "NO-SUCH-CARD</" in r.text and "1234.56</" in r.text  # no such card exists: no database read
    # every element of a card with a holder and a dated lot: serialized as much as the real answer
    assert "<tns:Holder>" in r.text and "<tns:NextExpiryDate>" in r.text
    assert r.headers["X-Request-Id"]
    # the envelope inspection applies: a SOAP 1.2 envelope is refused as at the endpoint
    r = requests.post(base + ECHO_PATH, data=ECHO_BODY.replace("http://schemas.xmlsoap.org/soap/envelope/",
                                                               "http://www.w3.org/2003/05/soap-envelope"),
                      timeout=10, headers={"Content-Type": "text/xml"}, auth=("echo-test", "echo-test-password"))
    assert r.status_code == 500 and "VersionMismatch" in r.text
    # the contract's endpoint and WSDL are the same as without the echo; the echo serves no WSDL
    served = requests.get(base + "/KKMTransfer?wsdl", timeout=10).text
    assert "KKMTransferEcho" not in served and "GetCardInfo" in served
    assert requests.get(base + ECHO_PATH + "?wsdl", timeout=10).status_code == 405
    client = zeep_client(base + "/KKMTransfer", "echo-test", "echo-test-password")
    with pytest.raises(Exception, match="not found"):
        client.service.GetCardInfo("NO-SUCH-CARD")


SALE_BODY = ('<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:k="urn:kkmtransfer:1">'
             '<soap:Body><k:RegisterOperation><k:Operation><k:OperationId>{opid}</k:OperationId>'
             '<k:CardNumber>{card}</k:CardNumber><k:KKM>K-1</k:KKM><k:OperationTime>2026-11-30T10:00:00Z'
             '</k:OperationTime><k:Kind>Sale</k:Kind>{sum}<k:BonusAccrued>5.00</k:BonusAccrued>'
             '<k:BonusSpent>1.00</k:BonusSpent></k:Operation></k:RegisterOperation></soap:Body></soap:Envelope>')


def test_the_sales_echo_reads_a_sale_as_the_endpoint_does_and_writes_nothing(serve, db):
    """The sale's echo (what spyne alone costs a sale, docs/performance.md §1): the contract's request type,
    validated as at the endpoint, a constant answer of OperationResult's shape, no database."""
    base = serve(echo=True)
    db.add_user("echo-test", "echo-test-password")
    auth = ("echo-test", "echo-test-password")
    headers = {"Content-Type": "text/xml", "SOAPAction": '"RegisterOperation"'}
    body = SALE_BODY.format(opid="echo-op-1", card="NO-SUCH-CARD", sum="<k:ReceiptSum>100.00</k:ReceiptSum>")
    r = requests.post(base + ECHO_PATH, data=body, timeout=10, headers=headers, auth=auth)
    assert r.status_code == 200, r.text
    assert "echo-op-1</" in r.text and "Applied</" in r.text and "1234.56</" in r.text
    assert "<tns:BonusAccrued>5.00</tns:BonusAccrued>" in r.text and "<tns:NextExpiryDate>" in r.text
    with db.engine.connect() as conn:  # nothing written: no card, no operation
        assert conn.execute(text("SELECT count(*) FROM operations")).scalar() == 0
    # the request type's own rules apply (ReceiptSum is required): a client fault, as at the endpoint
    r = requests.post(base + ECHO_PATH, data=SALE_BODY.format(opid="echo-op-2", card="C", sum=""), timeout=10,
                      headers=headers, auth=auth)
    assert r.status_code == 500 and "Client" in r.text, r.text
