"""A trivial SOAP service for the online benchmark: the ceiling of the SOAP stack, no database.

``make bench`` measures GetCardInfo and RegisterOperation beside this echo, served by the same gunicorn
workers through every layer of the HTTP front that does not touch the database, as the contract's endpoint
does (``soap/http.py``): the request id and the log context, HTTP Basic authentication of a register user
(with the throttle and the per-process credential cache: after the first request no database), the body
read within the size limit, the envelope inspection of ``soap/envelope.py``, the metrics of the request,
then spyne with the same protocols (lxml "soft" validation and the contract's element checks in, SOAP 1.1
out). Its ``GetCardInfo`` answers a CardInfo built from constants, with every element a card with a holder
and a dated bonus lot has (so the answer is serialized as the real one is), and the difference between the
two is what the project's own code costs per request: the database read, the ledger, the answer's values.
Its ``RegisterOperation`` reads a sale with the contract's own request type (validated as at the endpoint)
and answers a constant OperationResult of the real one's shape: what spyne alone costs a sale (the sale's
bound in ``bench_online.py``, docs/performance.md §1).

It is a separate spyne application (the contract's namespace, so its answer has the shape of the real one),
mounted at ``/KKMTransferEcho`` only when the environment has ``KKMTRANSFER_BENCH_ECHO=1`` (one hook in
``soap/http.py``): the contract's WSDL and endpoint are unchanged, and a production server does not serve it.
"""
from __future__ import annotations

import os
from datetime import date
from decimal import Decimal as D

from spyne import Application, ServiceBase, rpc

from .service import NS, CardInfo, KKMSoap11, KKMSoap11Out, KKMWsgiApplication, Operation, OperationResult, Text

ECHO_PATH = "/KKMTransferEcho"
ECHO_ENV = "KKMTRANSFER_BENCH_ECHO"

_ZERO = D("0.00")


def _card(number: str) -> CardInfo:
    return CardInfo(CardNumber=number, Status="Active", Holder="Echo Holder", BonusBalance=D("1234.56"),
                    BonusPending=_ZERO, NextExpiryDate=date(2099, 12, 31), NextExpiryAmount=D("500.00"),
                    Accumulation=D("100.00"), AccumulationPending=_ZERO, ReceiptCount=1, ReceiptCountPending=0)


class KKMTransferEcho(ServiceBase):
    @rpc(Text, _returns=CardInfo)
    def GetCardInfo(ctx, CardNumber):
        return _card(CardNumber)

    @rpc(Operation.customize(min_occurs=1, nillable=False), _returns=OperationResult)
    def RegisterOperation(ctx, Operation):
        """The sale's envelope read by spyne as the contract's RegisterOperation reads it (the same request
        type) and a constant answer of the same shape: what the SOAP stack alone costs a sale."""
        return OperationResult(OperationId=Operation.OperationId, Status="Applied", Card=_card(Operation.CardNumber),
                               BonusAccrued=Operation.BonusAccrued, BonusSpent=Operation.BonusSpent)


class EchoApp:
    """The echo's spyne application; the HTTP front (``KKMTransferApp``) serves it after the same layers as
    the contract's endpoint."""

    def __init__(self, settings):
        self.settings = settings
        self.soap = KKMWsgiApplication(Application(
            [KKMTransferEcho], tns=NS, name="KKMTransferEcho",
            in_protocol=KKMSoap11(validator="soft"), out_protocol=KKMSoap11Out()))


def echo_app(settings, environ=None):
    """The echo when the environment asks for it (KKMTRANSFER_BENCH_ECHO=1), else None."""
    if (os.environ if environ is None else environ).get(ECHO_ENV, "") != "1":
        return None
    return EchoApp(settings)
