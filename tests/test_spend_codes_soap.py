"""SMS codes before spending bonuses, over real HTTP with zeep; the SMS goes to a fake Stream Telecom
gateway (a real HTTP server on loopback), whose received text gives the tests the code."""
from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest
from zeep.exceptions import Fault

from kkmtransfer.adapters.sms import StreamTelecomSms
from kkmtransfer.config import Settings
from kkmtransfer.service_layer.services import BillingService

from .conftest import PASSWORD, USER, zeep_client
from .fake_sms_gateway import FakeGateway
from .helpers import new_id, op_dict

CARD, PHONE = "S100", "9161234567"
SMS_PASSWORD = "gateway-secret-pw"


@pytest.fixture(scope="module")
def gateway():
    gw = FakeGateway().start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def spend_settings(database_url, gateway) -> Settings:
    return Settings(database_url=database_url, spend_code="per-card", sms_login="chain", sms_password=SMS_PASSWORD,
                    sms_sender="Apteka", sms_url=gateway.url)


@pytest.fixture(scope="module")
def spend_billing(engine, spend_settings, clock):
    return BillingService(engine, spend_settings, clock)


@pytest.fixture(scope="module")
def spend_server(spend_billing, spend_settings):
    """A second SOAP server on the same database, with KKMTRANSFER_SPEND_CODE=per-card."""
    from kkmtransfer.soap.devserver import make_server
    from kkmtransfer.soap.http import KKMTransferApp

    httpd = make_server("127.0.0.1", 0, KKMTransferApp(spend_billing, spend_settings))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/KKMTransfer"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fake(gateway):
    gateway.reset()
    return gateway


@pytest.fixture
def soap(db, spend_server, fake, clock):
    db.add_user(USER, PASSWORD)
    clock.set(datetime.now(timezone.utc).replace(microsecond=0))
    return zeep_client(spend_server)


@pytest.fixture
def card(db, soap):
    """A card that needs a code, with a phone and 100.00 bonus."""
    db.add_card_range(100, 100, "S", 0, "Anna")
    db.set_card_phone(CARD, "+7 (916) 123-45-67")
    db.spend_codes.set_required(CARD, None, True)
    soap.service.RegisterOperation(Operation=op_dict(CARD, receipt_sum="1000.00", accrued="100.00"))
    return CARD


def code_of(exc) -> str:
    return exc.value.code.split(":")[-1]


def spend(soap, code=None, amount="10.00", op_id=None):
    return soap.service.RegisterOperation(Operation=op_dict(CARD, receipt_sum="50.00", spent=amount, op_id=op_id,
                                                            SpendCode=code))


def balance(soap) -> D:
    return soap.service.GetCardInfo(CARD).BonusBalance


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"


def test_code_required_wrong_three_times_locked_new_code_spends_once(soap, card, fake, clock, db):
    t0 = clock()
    with pytest.raises(Fault) as exc:
        spend(soap)
    assert code_of(exc) == "Client.SpendCodeRequired"

    sent = soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-1")
    assert sent.CardNumber == CARD and sent.MaskedPhone == "+7 *** ***-45-67"
    assert sent.ExpiresAt == t0 + timedelta(minutes=5)
    [first] = fake.codes_sent()
    assert len(first) == 6 and fake.queries()[0]["dadr"] == ["79161234567"]

    for expected in ("Client.SpendCodeInvalid", "Client.SpendCodeInvalid", "Client.SpendCodeLocked"):
        with pytest.raises(Fault) as exc:
            spend(soap, wrong(first))
        assert code_of(exc) == expected
    with pytest.raises(Fault) as exc:  # locked: even the right code is refused now
        spend(soap, first)
    assert code_of(exc) == "Client.SpendCodeLocked"
    assert balance(soap) == D("100.00")

    with pytest.raises(Fault) as exc:  # a new code only after the interval
        soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-1")
    assert code_of(exc) == "Client.SpendCodeTooFrequent"
    assert len(fake.requests) == 1

    clock.set(t0 + timedelta(seconds=61))
    soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-1")
    assert len(fake.requests) == 2
    second = fake.codes_sent()[-1]

    receipt = op_dict(CARD, receipt_sum="50.00", spent="10.00", SpendCode=second)
    result = soap.service.RegisterOperation(Operation=receipt)
    assert result.Status == "Applied" and result.Card.BonusBalance == D("90.00")
    with pytest.raises(Fault) as exc:  # the same code cannot spend twice
        spend(soap, second)
    assert code_of(exc) == "Client.SpendCodeInvalid" and "already used" in exc.value.message
    # the register's retry of the applied receipt is answered, not refused
    assert soap.service.RegisterOperation(Operation=receipt).Status == "AlreadyApplied"
    assert balance(soap) == D("90.00")

    events = db.spend_codes.events(t0 - timedelta(minutes=1), t0 + timedelta(hours=1), CARD)
    assert [(e["action"], e["outcome"]) for e in events] == [
        ("check", "missing"), ("request", "sent"), ("check", "wrong"), ("check", "wrong"), ("check", "locked"),
        ("check", "was_locked"), ("request", "too_frequent"), ("request", "sent"), ("check", "accepted"),
        ("check", "used")]
    assert {e["who"] for e in events} == {USER} and {e["kkm"] for e in events} == {"KKM-1"}


def test_accruals_returns_and_cards_without_the_flag_need_no_code(soap, card, db, fake):
    sale = soap.service.RegisterOperation(Operation=op_dict(CARD, receipt_sum="10.00", accrued="5.00"))
    assert sale.Status == "Applied"
    db.add_card_range(101, 101, "S", 0)
    soap.service.RegisterOperation(Operation=op_dict("S101", receipt_sum="100.00", accrued="20.00"))
    assert soap.service.RegisterOperation(Operation=op_dict("S101", receipt_sum="10.00", spent="5.00")).Status \
        == "Applied"
    # a spend made with a code, then returned: the return gives the bonus back without a code
    soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-1")
    op_id = new_id()
    spend(soap, fake.codes_sent()[-1], amount="20.00", op_id=op_id)
    ret = soap.service.RegisterOperation(Operation=op_dict(CARD, kind="Return", receipt_sum="50.00",
                                                           spent="20.00", OriginalOperationId=op_id))
    assert ret.Status == "Applied" and ret.Card.BonusBalance == D("105.00")


def test_too_frequent_requests_are_refused_and_cost_nothing(soap, card, fake, clock):
    t0 = clock()
    for i in range(5):
        clock.set(t0 + timedelta(seconds=61 * i))
        soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-1")
        with pytest.raises(Fault) as exc:  # again within the minute
            soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-2")
        assert code_of(exc) == "Client.SpendCodeTooFrequent"
    clock.set(t0 + timedelta(minutes=30))
    with pytest.raises(Fault) as exc:  # the sixth within the hour
        soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-1")
    assert code_of(exc) == "Client.SpendCodeTooFrequent" and "1800 s" in exc.value.message
    assert len(fake.requests) == 5
    clock.set(t0 + timedelta(hours=1, seconds=1))
    soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-1")
    assert len(fake.requests) == 6
    # only the newest code works
    older, newest = fake.codes_sent()[-2:]
    if older != newest:
        with pytest.raises(Fault):
            spend(soap, older)
    assert spend(soap, newest).Status == "Applied"


def test_a_code_expires_after_five_minutes(soap, card, fake, clock):
    t0 = clock()
    soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-1")
    clock.set(t0 + timedelta(minutes=5))
    with pytest.raises(Fault) as exc:
        spend(soap, fake.codes_sent()[-1])
    assert code_of(exc) == "Client.SpendCodeInvalid" and "expired" in exc.value.message
    assert balance(soap) == D("100.00")


def test_a_right_code_is_not_used_up_by_a_spend_that_fails(soap, card, fake, db, clock):
    soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-1")
    code = fake.codes_sent()[-1]
    with pytest.raises(Fault) as exc:
        spend(soap, code, amount="500.00")
    assert code_of(exc) == "Client.InsufficientBonus"
    assert spend(soap, code, amount="100.00").Card.BonusBalance == D("0.00")
    events = db.spend_codes.events(clock() - timedelta(hours=1), clock() + timedelta(hours=1), CARD)
    assert [e["outcome"] for e in events] == ["sent", "spend_refused", "accepted"]
    assert events[1]["detail"].startswith("Client.InsufficientBonus")


def test_a_card_without_a_phone_gets_a_clear_fault(soap, card, db, fake):
    db.set_card_phone(CARD, None)
    with pytest.raises(Fault) as exc:
        soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-1")
    assert code_of(exc) == "Client.ValidationError" and "no phone number" in exc.value.message
    with pytest.raises(Fault) as exc:
        spend(soap)
    assert code_of(exc) == "Client.SpendCodeRequired" and "no phone number" in exc.value.message
    assert fake.requests == [] and balance(soap) == D("100.00")


@pytest.mark.parametrize("mode", ["down", "error", "http500", "slow"])
def test_gateway_trouble_is_server_sms_gateway_unavailable_and_spends_nothing(soap, card, fake, mode, caplog,
                                                                            spend_billing):
    if mode == "down":
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        spend_billing.spend_codes._provider = StreamTelecomSms(f"http://127.0.0.1:{dead}/get/", "chain",
                                                                SMS_PASSWORD, "Apteka")
    elif mode == "error":
        fake.mode, fake.error_text = "error", "ERROR 3: not enough money on the account"
    else:
        fake.mode, fake.delay = mode, 7
    try:
        with caplog.at_level("WARNING", logger="kkmtransfer.spend_codes"):
            started = time.monotonic()
            with pytest.raises(Fault) as exc:
                soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-1")
            elapsed = time.monotonic() - started
    finally:
        spend_billing.spend_codes._provider = None  # built again from the settings
    assert code_of(exc) == "Server.SmsGatewayUnavailable"
    assert elapsed < 5.8, elapsed
    why = {"down": "cannot reach the gateway", "error": "not enough money", "http500": "HTTP 500",
           "slow": "did not answer within 5 s"}[mode]
    assert why in caplog.text and why in exc.value.message and SMS_PASSWORD not in caplog.text
    assert len(fake.requests) == (0 if mode == "down" else 1)
    assert balance(soap) == D("100.00")
    with pytest.raises(Fault) as exc:  # nothing was spent, and no code works yet
        spend(soap, "000000")
    assert code_of(exc) == "Client.SpendCodeInvalid"
    # nothing surely went out (or, slow: the hour counts it, the minute does not): ask again at once
    fake.mode = "ok"
    soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-1")
    assert spend(soap, fake.codes_sent()[-1]).Card.BonusBalance == D("90.00")


def test_concurrent_spends_with_one_code_apply_once(soap, card, fake, spend_server):
    soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-1")
    code = fake.codes_sent()[-1]
    n = 8
    clients = [zeep_client(spend_server) for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list[str] = [""] * n

    def run(i):
        barrier.wait()
        try:
            results[i] = spend(clients[i], code, amount="10.00").Status
        except Fault as exc:
            results[i] = exc.code.split(":")[-1] + ("/used" if "already used" in exc.message else "")
        except Exception as exc:  # noqa: BLE001 - shown by the assertion
            results[i] = repr(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert Counter(results) == {"Applied": 1, "Client.SpendCodeInvalid/used": n - 1}, results
    assert balance(soap) == D("90.00")


def test_a_hold_needs_the_code_and_its_confirmation_does_not(soap, card, fake, db):
    """ReserveBonus spends: it needs the code like a Sale; the Sale that confirms the hold needs none."""
    hold_id = new_id()
    with pytest.raises(Fault) as exc:
        soap.service.ReserveBonus(OperationId=hold_id, CardNumber=CARD, KKM="KKM-1", Amount=D("30.00"))
    assert code_of(exc) == "Client.SpendCodeRequired"
    assert balance(soap) == D("100.00")

    soap.service.RequestSpendCode(CardNumber=CARD, KKM="KKM-1")
    code = fake.codes_sent()[-1]
    with pytest.raises(Fault) as exc:
        soap.service.ReserveBonus(OperationId=hold_id, CardNumber=CARD, KKM="KKM-1", Amount=D("30.00"),
                                  SpendCode=wrong(code))
    assert code_of(exc) == "Client.SpendCodeInvalid"
    held = soap.service.ReserveBonus(OperationId=hold_id, CardNumber=CARD, KKM="KKM-1", Amount=D("30.00"),
                                     SpendCode=code)
    assert held.Status == "Reserved" and held.Card.BonusBalance == D("70.00")
    with pytest.raises(Fault) as exc:  # the code paid for that hold: not for another spend
        spend(soap, code)
    assert code_of(exc) == "Client.SpendCodeInvalid"

    confirmed = soap.service.RegisterOperation(Operation=op_dict(CARD, receipt_sum="50.00", spent="20.00",
                                                                 op_id=hold_id))
    assert confirmed.Status == "Applied" and confirmed.Card.BonusBalance == D("80.00")
