"""The Stream Telecom provider against a fake gateway: a real HTTP server on loopback."""
from __future__ import annotations

import logging
import socket
import time
from urllib.parse import quote

import pytest

from kkmtransfer.adapters.sms import ConsoleSms, SmsError, StreamTelecomSms, provider_from_settings
from kkmtransfer.config import DEFAULT_SMS_TEXT, ConfigError, Settings

from .fake_sms_gateway import FakeGateway

PASSWORD = "p@ss w0rd/Секрет&x=1"


@pytest.fixture(scope="module")
def gateway():
    gw = FakeGateway().start()
    yield gw
    gw.stop()


@pytest.fixture
def fake(gateway):
    gateway.reset()
    return gateway


def provider(url, **kw) -> StreamTelecomSms:
    return StreamTelecomSms(url, "chain-login", PASSWORD, "Apteka", **kw)


def test_the_query_the_gateway_receives(fake):
    message_id = provider(fake.url).send("79161234567", "Код: 042917")
    assert message_id.isdigit()
    # exactly one request, these parameters in this order, UTF-8 percent-encoded (space as +)
    assert fake.requests == [
        "/get/?user=chain-login"
        "&pwd=p%40ss+w0rd%2F%D0%A1%D0%B5%D0%BA%D1%80%D0%B5%D1%82%26x%3D1"
        "&sadr=Apteka&dadr=79161234567"
        "&text=%D0%9A%D0%BE%D0%B4%3A+042917"]
    [query] = fake.queries()
    assert query == {"user": ["chain-login"], "pwd": [PASSWORD], "sadr": ["Apteka"],
                     "dadr": ["79161234567"], "text": ["Код: 042917"]}


def test_the_default_text_is_russian_and_carries_the_code(fake):
    provider(fake.url).send("79161234567", DEFAULT_SMS_TEXT.replace("{code}", "042917"))
    [query] = fake.queries()
    assert query["text"] == ["Код для списания бонусов: 042917. Никому не сообщайте его, кроме кассира."]


@pytest.mark.parametrize("phone", ["9161234567", "89161234567", "+79161234567", "7916123456"])
def test_a_phone_not_in_gateway_form_is_refused_without_a_request(fake, phone):
    with pytest.raises(SmsError):
        provider(fake.url).send(phone, "x")
    assert fake.requests == []


def test_an_error_text_is_the_gateways_refusal(fake):
    fake.mode = "error"
    with pytest.raises(SmsError) as info:
        provider(fake.url).send("79161234567", "code 1234")
    assert "invalid sender" in info.value.reason and not info.value.uncertain
    assert len(fake.requests) == 1


def test_an_http_error_is_a_failure_and_not_retried(fake):
    fake.mode = "http500"
    with pytest.raises(SmsError) as info:
        provider(fake.url).send("79161234567", "code 1234")
    assert "HTTP 500" in info.value.reason
    assert len(fake.requests) == 1


def test_a_gateway_that_is_down_fails_at_once():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(SmsError) as info:
        provider(f"http://127.0.0.1:{port}/get/").send("79161234567", "code 1234")
    assert time.monotonic() - started < 1
    assert "cannot reach the gateway" in info.value.reason and not info.value.uncertain


def test_connect_timeout_is_three_seconds_by_default():
    """A listener whose accept queue is full drops new handshakes: the connection never completes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue (never accepted)
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(listener.getsockname())
            fillers.append(c)
        time.sleep(0.1)
        p = provider(f"http://127.0.0.1:{listener.getsockname()[1]}/get/")
        assert p.connect_timeout == 3.0 and p.total_timeout == 5.0
        started = time.monotonic()
        with pytest.raises(SmsError) as info:
            p.send("79161234567", "code 1234")
        elapsed = time.monotonic() - started
    finally:
        for c in fillers:
            c.close()
        listener.close()
    assert 2.8 < elapsed < 3.6, elapsed
    assert "no connection to the gateway within 3 s" == info.value.reason
    assert not info.value.uncertain


def test_a_slow_gateway_is_cut_off_at_the_total_timeout_once(fake):
    fake.mode, fake.delay = "slow", 8
    started = time.monotonic()
    with pytest.raises(SmsError) as info:
        provider(fake.url).send("79161234567", "code 1234")
    elapsed = time.monotonic() - started
    assert 4.5 < elapsed < 5.8, elapsed
    assert info.value.uncertain  # the request went out: an SMS may have been sent
    time.sleep(0.2)
    assert len(fake.requests) == 1  # no retry


def test_a_trickling_answer_is_cut_off_at_the_total_timeout(fake):
    """Each byte arrives well within the read timeout; only the total deadline stops it."""
    fake.mode, fake.delay = "trickle", 0.6
    started = time.monotonic()
    with pytest.raises(SmsError) as info:
        provider(fake.url, total_timeout=1.0).send("79161234567", "code 1234")
    assert time.monotonic() - started < 1.6
    assert "took over" in info.value.reason
    assert len(fake.requests) == 1


def test_the_password_is_never_logged_even_at_debug(fake, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "urllib3.connectionpool", "requests", "kkmtransfer"):
        caplog.set_level(logging.DEBUG, logger=name)
    p = provider(fake.url)
    p.send("79161234567", "code 918273")
    fake.mode = "error"
    fake.error_text = f"bad password {PASSWORD}"  # even a gateway echoing it
    with pytest.raises(SmsError) as refused:
        p.send("79161234567", "code 1234")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SmsError) as down:
        provider(f"http://127.0.0.1:{port}/get/").send("79161234567", "code 1234")
    fake.mode, fake.delay = "slow", 2
    with pytest.raises(SmsError) as slow:
        provider(fake.url, total_timeout=0.5).send("79161234567", "code 1234")

    logged = caplog.text + "".join(repr(r.args) + str(r.msg) for r in caplog.records)
    assert "GET /get/?user=chain-login&pwd=***" in logged  # urllib3's debug line was there, masked
    assert "918273" not in logged  # nor the code in the text
    forms = {PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD, safe="").replace("%20", "+"), "p@ss", "w0rd"}
    for form in forms:
        assert form not in logged
        for exc in (refused, down, slow):
            assert form not in str(exc.value) and form not in exc.value.reason
    assert PASSWORD not in repr(p) and PASSWORD not in repr(Settings(database_url="-", sms_password=PASSWORD))


def test_console_provider_logs_the_code(caplog):
    caplog.set_level(logging.INFO)
    assert ConsoleSms().send("79161234567", "Код: 123456") == "console"
    assert "123456" in caplog.text and "79161234567" in caplog.text


def test_provider_selection():
    base = dict(database_url="-")
    assert isinstance(provider_from_settings(Settings(**base)), ConsoleSms)
    st = Settings(**base, sms_login="l", sms_password="p", sms_sender="s", sms_url="http://127.0.0.1:1/get/")
    assert isinstance(provider_from_settings(st), StreamTelecomSms)
    forced = Settings(**base, sms_login="l", sms_password="p", sms_sender="s", sms_provider="console")
    assert isinstance(provider_from_settings(forced), ConsoleSms)
    with pytest.raises(ConfigError):
        Settings(**base, sms_provider="stream-telecom")  # no login
    with pytest.raises(ConfigError):
        Settings(**base, sms_login="l", sms_password="p")  # no sender
    with pytest.raises(ConfigError):
        Settings(**base, sms_text="no placeholder")
    env = {"KKMTRANSFER_SMS_LOGIN": "l", "KKMTRANSFER_SMS_PASSWORD": "p", "KKMTRANSFER_SMS_SENDER": "s"}
    assert Settings.from_env(env).effective_sms_provider == "stream-telecom"
    assert Settings.from_env({**env, "KKMTRANSFER_SMS_PROVIDER": "Console"}).effective_sms_provider == "console"
    assert Settings.from_env({}).sms_url == "https://gateway.api.sc/get/"
