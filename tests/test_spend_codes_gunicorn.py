"""One SMS code, many registers at once, through gunicorn with several worker processes."""
from __future__ import annotations

import os
from collections import Counter
from decimal import Decimal as D

import pytest
import requests

from .conftest import PASSWORD, USER, free_port, running_gunicorn, zeep_client
from .fake_sms_gateway import FakeGateway
from .helpers import op_dict
from .test_concurrency import hammer

pytestmark = pytest.mark.slow
N = 12


@pytest.fixture(scope="module")
def gateway():
    gw = FakeGateway().start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def spend_gunicorn(database_url, gateway, tmp_path_factory):
    """gunicorn (3 workers x 4 threads) with KKMTRANSFER_SPEND_CODE=all and the fake gateway."""
    port = free_port()
    log = tmp_path_factory.mktemp("gunicorn-sc") / "gunicorn.log"
    env = dict(os.environ, KKMTRANSFER_DATABASE_URL=database_url, KKMTRANSFER_SPEND_CODE="all",
               KKMTRANSFER_SMS_LOGIN="chain", KKMTRANSFER_SMS_PASSWORD="pw-gunicorn", KKMTRANSFER_SMS_SENDER="Apteka",
               KKMTRANSFER_SMS_URL=gateway.url)
    url = f"http://127.0.0.1:{port}/KKMTransfer"
    with running_gunicorn(["--workers", "3", "--threads", "4", "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "2",
                           "kkmtransfer.wsgi:application"], env, log, url + "?wsdl", timeout=60):
        yield url
    assert "pw-gunicorn" not in log.read_text()


def test_concurrent_spends_with_one_code_apply_once_across_processes(db, spend_gunicorn, gateway):
    gateway.reset()
    db.add_user(USER, PASSWORD)
    db.add_card_range(1, 1, "G", 0, None)
    db.set_card_phone("G1", "9031112233")
    client = zeep_client(spend_gunicorn)
    client.service.RegisterOperation(Operation=op_dict("G1", accrued="100.00"))
    sent = client.service.RequestSpendCode(CardNumber="G1", KKM="KKM-1")
    assert sent.MaskedPhone == "+7 *** ***-22-33"
    [code] = gateway.codes_sent()

    results = hammer(spend_gunicorn, [op_dict("G1", receipt_sum="50.00", spent="10.00", SpendCode=code)
                                      for _ in range(N)])
    results = [str(r).split(":")[-1] for r in results]  # a fault code may come as a QName (soap:Client.X)
    assert Counter(results) == {"Applied": 1, "Client.SpendCodeInvalid": N - 1}, results
    assert db.card_info("G1").balances.bonus == D("90.00")
    outcomes = Counter(e["outcome"] for e in db.spend_codes.events(sent.ExpiresAt.replace(year=2000),
                                                                   sent.ExpiresAt.replace(year=2100), "G1"))
    assert outcomes == {"sent": 1, "accepted": 1, "used": N - 1}
