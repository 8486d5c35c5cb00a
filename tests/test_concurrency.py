"""Concurrent registers hitting one card, through gunicorn with several worker processes."""
from __future__ import annotations

import threading
from collections import Counter
from decimal import Decimal as D

import pytest
from sqlalchemy import func, select
from zeep.exceptions import Fault

from kkmtransfer.adapters.db import operations

from .conftest import PASSWORD, USER, zeep_client
from .helpers import new_id, op_dict

N = 30
pytestmark = pytest.mark.slow


def hammer(url: str, operations_to_send: list[dict]) -> list[object]:
    """Send each operation from its own thread, all released at once; returns Status or fault code."""
    clients = [zeep_client(url, USER, PASSWORD) for _ in operations_to_send]
    for c in clients:  # no stale keep-alive connection from the WSDL fetch (gunicorn closes idle ones after 2 s)
        c.transport.session.close()
    barrier = threading.Barrier(len(operations_to_send))
    results: list[object] = [None] * len(operations_to_send)

    def run(i):
        barrier.wait()
        try:
            results[i] = clients[i].service.RegisterOperation(Operation=operations_to_send[i]).Status
        except Fault as exc:
            results[i] = (exc.code or "").split(":")[-1]  # soap:Client.X -> Client.X
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[i] = repr(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(operations_to_send))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def n_operations(db) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(operations)).scalar_one()


def test_concurrent_spends_never_take_more_than_the_card_had(db, gunicorn):
    db.add_user(USER, PASSWORD)
    db.add_card_range(1, 1, "CC", 0, None)
    client = zeep_client(gunicorn)
    client.service.RegisterOperation(Operation=op_dict("CC1", accrued="100.00"))
    # 30 spends of 7.00..12.80: together far more than the 100.00 on the card
    amounts = [D("7.00") + D("0.20") * i for i in range(N)]
    results = hammer(gunicorn, [op_dict("CC1", receipt_sum="500.00", spent=str(a)) for a in amounts])

    assert set(results) <= {"Applied", "Client.InsufficientBonus"}, results
    spent = sum((a for a, r in zip(amounts, results) if r == "Applied"), D("0.00"))
    balance = db.card_info("CC1").balances.bonus
    assert D("0.00") <= balance == D("100.00") - spent
    # the balance only goes down, so every refused spend is above what is left: none was refused wrongly
    assert all(a > balance for a, r in zip(amounts, results) if r != "Applied")
    assert n_operations(db) == 1 + Counter(results)["Applied"]


def test_the_same_operation_sent_30_times_at_once_applies_once(db, gunicorn):
    db.add_user(USER, PASSWORD)
    db.add_card_range(1, 1, "CC", 0, None)
    op = op_dict("CC1", receipt_sum="250.00", accrued="12.50", op_id=new_id())
    results = hammer(gunicorn, [op] * N)

    assert Counter(results) == {"Applied": 1, "AlreadyApplied": N - 1}, results
    b = db.card_info("CC1").balances
    assert (b.bonus, b.accumulation, b.receipt_count) == (D("12.50"), D("250.00"), 1)
    assert n_operations(db) == 1
