"""A trivial SOAP service for the online benchmark: the ceiling of the SOAP stack, no database.

``make bench`` measures GetCardInfo and RegisterOperation beside this echo, served by the same gunicorn
workers through the same layers that do not touch the database: the request body read within the size
limit, the envelope inspection of ``soap/envelope.py``, spyne with the same protocols (lxml "soft"
validation and the contract's element checks in, SOAP 1.1 out). Its ``GetCardInfo`` answers a
CardInfo-shaped result built from constants, so the difference between the two is what the project's own
code (authentication, the database, the ledger) costs per request.

It is a separate spyne application (the contract's namespace, so its answer has the shape of the real one),
mounted at ``/KKMTransferEcho`` only when the environment has ``KKMTRANSFER_BENCH_ECHO=1`` (one hook in
``soap/http.py``): the contract's WSDL and endpoint are unchanged, and a production server does not serve it.
"""
from __future__ import annotations

import io
import os
from decimal import Decimal as D

from spyne import Application, ServiceBase, rpc

from .envelope import SoapFault, fault_envelope, inspect_envelope
from .service import NS, CardInfo, KKMSoap11, KKMSoap11Out, KKMWsgiApplication, Text

ECHO_PATH = "/KKMTransferEcho"
ECHO_ENV = "KKMTRANSFER_BENCH_ECHO"

_ZERO = D("0.00")


class KKMTransferEcho(ServiceBase):
    @rpc(Text, _returns=CardInfo)
    def GetCardInfo(ctx, CardNumber):
        return CardInfo(CardNumber=CardNumber, Status="Active", Holder=None, BonusBalance=D("1234.56"),
                        BonusPending=_ZERO, NextExpiryDate=None, NextExpiryAmount=_ZERO,
                        Accumulation=D("100.00"), AccumulationPending=_ZERO, ReceiptCount=1,
                        ReceiptCountPending=0)


class EchoApp:
    """The WSGI side: the body read and inspected as the real endpoint does, then spyne."""

    def __init__(self, settings):
        self.settings = settings
        self.soap = KKMWsgiApplication(Application(
            [KKMTransferEcho], tns=NS, name="KKMTransferEcho",
            in_protocol=KKMSoap11(validator="soft"), out_protocol=KKMSoap11Out()))

    def __call__(self, environ, start):
        limit = self.settings.max_request_bytes
        declared = int(environ.get("CONTENT_LENGTH") or -1)
        body = environ["wsgi.input"].read(declared if 0 <= declared <= limit else limit + 1)
        try:
            if len(body) > limit:
                raise SoapFault("Client.ValidationError", "the request body is over the limit")
            inspect_envelope(body, self.settings.max_elements, self.settings.max_attributes)
        except SoapFault as fault:
            answer = fault_envelope(fault.code, fault.string)
            start("500 Internal Server Error", [("Content-Type", "text/xml; charset=utf-8"),
                                                ("Content-Length", str(len(answer)))])
            return [answer]
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return self.soap(environ, start)


def echo_app(settings, environ=None):
    """The echo's WSGI application when the environment asks for it (KKMTRANSFER_BENCH_ECHO=1), else None."""
    if (os.environ if environ is None else environ).get(ECHO_ENV, "") != "1":
        return None
    return EchoApp(settings)
