"""Holds under load and on a real Celery worker.

50 registers at once on one card (gunicorn, 4 processes of 4 threads): half reserve, half spend; the
held plus the spent never exceed what the card had. And a hold nobody confirms is released by the
periodic task on a real worker consuming from Redis.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from decimal import Decimal as D

import pytest
import requests
from zeep.exceptions import Fault

from kkmtransfer.service_layer.holds import HoldService
from kkmtransfer.service_layer.services import BillingService
from kkmtransfer.tasks import release_hung_holds

from .conftest import PASSWORD, USER, zeep_client
from .helpers import new_id, op_dict, request
from .test_celery import client_app, redis_url, worker  # noqa: F401 - fixtures: a real worker on Redis

N = 50


@pytest.mark.slow
def test_50_concurrent_holds_and_spends_never_exceed_the_balance(db, gunicorn):
    db.add_user(USER, PASSWORD)
    db.add_card_range(1, 1, "HC", 0, None)
    zeep_client(gunicorn).service.RegisterOperation(Operation=op_dict("HC1", accrued="200.00"))
    amounts = [D("5.00") + D("0.15") * i for i in range(N)]  # 5.00 .. 12.35: together ~434
    clients = [zeep_client(gunicorn) for _ in range(N)]
    barrier = threading.Barrier(N)
    results: list[object] = [None] * N

    def run(i):
        op_id = new_id()
        barrier.wait()
        for attempt in range(5):  # a register retries a dropped connection with the same OperationId
            try:
                if i % 2:
                    status = clients[i].service.ReserveBonus(OperationId=op_id, CardNumber="HC1", KKM=f"K{i}",
                                                             Amount=amounts[i]).Status
                else:
                    status = clients[i].service.RegisterOperation(
                        Operation=op_dict("HC1", receipt_sum="50.00", spent=str(amounts[i]), op_id=op_id)).Status
                results[i] = {"AlreadyReserved": "Reserved", "AlreadyApplied": "Applied"}.get(status, status)
                return
            except Fault as exc:
                results[i] = exc.code.split(":")[-1]
                return
            except requests.ConnectionError as exc:
                results[i] = repr(exc)
                time.sleep(0.5)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                results[i] = repr(exc)
                return

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(results) <= {"Applied", "Reserved", "Client.InsufficientBonus"}, results
    taken = sum((a for a, r in zip(amounts, results) if r in ("Applied", "Reserved")), D("0.00"))
    balance = db.card_info("HC1").balances.bonus
    assert D("0.00") <= balance == D("200.00") - taken
    assert taken <= D("200.00")
    # the balance only went down: every refusal was for more than what is left now
    assert all(a > balance for a, r in zip(amounts, results) if r == "Client.InsufficientBonus")
    assert len(HoldService(db).list()) == sum(1 for r in results if r == "Reserved")


def test_a_hung_hold_is_released_by_the_task_on_a_real_worker(db, worker, client_app):  # noqa: F811
    db.add_card_range(1, 1, "HW", 0, None)
    db.register_operation(request("HW1", accrued="80.00"))
    short = BillingService(db.engine, dataclasses.replace(db.settings, hold_timeout=1), db.clock)
    hung, fresh = new_id(), new_id()
    HoldService(short).reserve(hung, "HW1", "KKM-9", D("30.00"))
    HoldService(db).reserve(fresh, "HW1", "KKM-9", D("20.00"))  # 900 s: not hung
    assert db.card_info("HW1").balances.bonus == D("30.00")
    time.sleep(1.2)
    assert [h["id"] for h in HoldService(db).list(hung=True)] == [hung]

    released = client_app.send_task(release_hung_holds.name, queue=worker).get(timeout=60)

    assert released == 1
    assert db.card_info("HW1").balances.bonus == D("60.00")
    assert [h["id"] for h in HoldService(db).list()] == [fresh]
    assert client_app.send_task(release_hung_holds.name, queue=worker).get(timeout=60) == 0


def test_beat_releases_hung_holds_every_minute():
    from kkmtransfer.tasks import app

    [entry] = [e for e in app.conf.beat_schedule.values() if e["task"] == release_hung_holds.name]
    assert entry["schedule"] == 60.0
