"""SOAP types and translation of contract Extensions B (SMS code before spending bonuses)."""
from __future__ import annotations

from spyne import ComplexModel
from spyne.model.primitive import DateTime, Unicode

from ..service_layer.spend_codes import IssuedCode

NS = "urn:kkmtransfer:1"

SPEND_CODE_FAULTS = {
    "Client.SpendCodeRequired", "Client.SpendCodeInvalid", "Client.SpendCodeLocked",
    "Client.SpendCodeTooFrequent", "Server.SmsGatewayUnavailable",
}

# `Operation.SpendCode`: the digits the holder read out from the SMS (optional)
SpendCodeField = Unicode(min_occurs=0)


class SpendCodeResult(ComplexModel):
    __namespace__ = NS
    _type_info = [
        ("CardNumber", Unicode(min_occurs=1, nillable=False)),
        ("ExpiresAt", DateTime(min_occurs=1, nillable=False)),
        ("MaskedPhone", Unicode(min_occurs=1, nillable=False)),
    ]


def spend_code_result(issued: IssuedCode, tz) -> SpendCodeResult:
    return SpendCodeResult(CardNumber=issued.card_number, ExpiresAt=issued.expires_at.astimezone(tz),
                           MaskedPhone=issued.masked_phone)


def request_spend_code(ctx, card_number, kkm) -> SpendCodeResult:
    billing = ctx.app.billing
    who = ctx.transport.req_env.get("REMOTE_USER")
    issued = billing.spend_codes.request_code(card_number, kkm, who=who)
    return spend_code_result(issued, billing.settings.tz)
