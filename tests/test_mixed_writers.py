"""Several kinds of writers on the same cards at once: the journal import, registers online, a bonus
action and the nightly regulation. Nothing may be lost or applied twice, and the books must add up."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest
from sqlalchemy import func, select

from kkmtransfer.adapters.db import operations
from kkmtransfer.adapters.journal_file import HEADER
from kkmtransfer.domain import errors
from kkmtransfer.service_layer.actions import Actions, Selection
from kkmtransfer.service_layer.journal import JournalImport
from kkmtransfer.service_layer.nightly import Nightly

from .helpers import request

pytestmark = pytest.mark.slow
CARDS = ["W1", "W2", "W3"]


def test_import_online_action_and_nightly_at_once(db, tmp_path):
    db.add_card_range(1, 3, "W", 0, None)
    db.add_promotion("OLD", "old", lifetime_days=1)
    t0 = datetime.now(timezone.utc) - timedelta(days=5)
    for card in CARDS:
        db.register_operation(request(card, accrued="500.00", time=t0))
        db.register_operation(request(card, accrued="9.00", time=t0, promotion_code="OLD"))  # burnt by now
    lines = [f"K9;{i};{(t0 + timedelta(seconds=i)).isoformat()};Sale;{CARDS[i % 3]};R{i};10.00;1.00;"
             f"{'2.00' if i % 4 == 0 else '0'};;;;;" for i in range(600)]
    path = tmp_path / "w.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")

    results: dict[str, object] = {}
    failures: list[BaseException] = []

    def guarded(name, fn):
        def run():
            try:
                results[name] = fn()
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)
        return threading.Thread(target=run, name=name)

    def online():
        applied = 0
        for i in range(150):
            try:
                db.register_operation(request(CARDS[i % 3], receipt_sum="5.00", accrued="0.50",
                                              spent="3.00" if i % 2 else "0"))
                applied += 1
            except errors.InsufficientBonus:
                pass
        return applied

    threads = [
        guarded("import", lambda: JournalImport(db, batch=50).import_file(path)),
        guarded("online", online),
        guarded("action", lambda: Actions(db, batch=1).credit("7.00", Selection(numbers=tuple(CARDS)), note="mix")),
        guarded("nightly", lambda: Nightly(db, batch=2).run()),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures
    imported, online_applied = results["import"], results["online"]
    assert imported.applied == 600 and imported.rejected == 0
    assert results["action"].done == 3
    with db.engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(operations)
                         .where(operations.c.source != "Nightly")).scalar_one()
    assert n == 6 + 600 + online_applied + 3
    # what every card holds is exactly what was moved on it: 500 + 600/3 x (1.00) - 150/3 x 2.00 + ...
    spent_online = D("3.00") * (online_applied - sum(1 for i in range(150) if i % 2 == 0))
    total = sum(db.card_info(c).balances.bonus for c in CARDS)
    assert total == D("1500.00") + D("600.00") - D("300.00") + D("0.50") * online_applied - spent_online \
        + D("21.00")
    # (the fixture then runs `ledger verify` and compares every balance with its lots)
