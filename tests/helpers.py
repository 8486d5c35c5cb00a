"""Helpers for tests: building operations and checking the ledger's invariants."""
from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal

from sqlalchemy import select

from kkmtransfer.adapters.db import cards, lots
from kkmtransfer.domain.model import OperationRequest

D = Decimal

# The day the tests' cards were handed out: before every receipt the tests date. A card refuses receipts from
# before it existed (KKMTRANSFER_OPTIME_BEFORE_CARD_GRACE, tested in test_operation_time_window.py), so
# fixtures that send dated receipts enter their cards with this date of issue.
ISSUED = datetime(2020, 1, 1, tzinfo=timezone.utc)


def new_id() -> str:
    return str(uuid.uuid4())


def op_dict(card: str, kind: str = "Sale", receipt_sum="100.00", accrued="0.00", spent="0.00",
            op_id: str | None = None, time: datetime | None = None, kkm: str = "KKM-1", **extra) -> dict:
    """An ``Operation`` as a zeep user passes it."""
    op = dict(
        OperationId=op_id or new_id(), CardNumber=card, KKM=kkm,
        OperationTime=time or datetime.now(timezone.utc), Kind=kind,
        ReceiptSum=D(receipt_sum), BonusAccrued=D(accrued), BonusSpent=D(spent),
    )
    op.update(extra)
    return op


def request(card: str, kind: str = "Sale", receipt_sum="100.00", accrued="0.00", spent="0.00",
            op_id: str | None = None, time: datetime | None = None, **extra) -> OperationRequest:
    """The same as an ``OperationRequest`` for the service layer."""
    return OperationRequest.build(
        operation_id=op_id or new_id(), card_number=card, kkm=extra.pop("kkm", "KKM-1"),
        operation_time=time or datetime.now(timezone.utc), kind=kind, receipt_sum=D(receipt_sum),
        bonus_accrued=None if accrued is None else D(accrued), bonus_spent=D(spent), **extra)


def assert_invariants(billing) -> None:
    """What must hold after any sequence of operations:

    1. `ledger verify` finds nothing: every lot's remaining is the sum of its entries, every Sale/Return
       moved exactly what it reported, no dated lot and no lot without a debt entry is negative;
    2. every card's reported balances are the sums of its live / pending lots, computed here
       independently from the lot rows.
    """
    from kkmtransfer.service_layer.reports import Reports

    assert Reports(billing).verify() == []
    now = billing.clock()
    with billing.engine.connect() as conn:
        lot_rows = conn.execute(select(lots)).mappings().all()
        card_numbers = conn.execute(select(cards.c.number).where(cards.c.status != "Certificate")).scalars().all()

    live = defaultdict(lambda: D("0.00"))
    pending = defaultdict(lambda: D("0.00"))
    for lot in lot_rows:
        key = (lot["card_number"], lot["measure"])
        if lot["available_from"] is not None and lot["available_from"] > now:
            pending[key] += lot["remaining"]
        elif lot["expires_at"] is None or lot["expires_at"] > now:
            live[key] += lot["remaining"]

    for number in card_numbers:
        b = billing.card_info(number).balances
        assert b.bonus == live[(number, "bonus")], number
        assert b.bonus_pending == pending[(number, "bonus")], number
        assert b.accumulation == live[(number, "accumulation")], number
        assert b.accumulation_pending == pending[(number, "accumulation")], number
        assert b.receipt_count == int(live[(number, "receipt_count")]), number
        assert b.receipt_count_pending == int(pending[(number, "receipt_count")]), number


def read_all(engine, stmt):
    """A statement's whole result on a connection closed at once: a connection left checked out keeps its
    transaction open on PostgreSQL and blocks the next test's TRUNCATE."""
    with engine.connect() as conn:
        return conn.execute(stmt).freeze()()
