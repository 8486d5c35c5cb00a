"""Receipts with lines (CONTRACT.md, Extensions A): a Sale's accrual calculated from its lines by the
program in force at its time, and line-level returns that take back exactly those lines' share.

Called from ``BillingService.apply`` with the card locked; they return the request with the amounts the
server decided and the lines to keep with the operation, and write nothing themselves until
``save_lines``.
"""
from __future__ import annotations

import dataclasses
from decimal import Decimal

from ..adapters.program_repo import ProgramRepository
from ..domain import errors
from ..domain.ledger import CardLedger
from ..domain.model import ZERO, Kind, Measure, OperationRequest
from ..domain.program import Program, ReceiptLine, calculate, share_of

# rows for receipt_lines: (ReceiptLine, (max_payment, spent, accrued))
LineRows = list


def sale_with_lines(repo, request: OperationRequest, ledger: CardLedger, tz) -> tuple[OperationRequest, LineRows]:
    """Spread the Sale's BonusSpent over its lines and calculate the accrual (when BonusAccrued is
    omitted; when given, it must agree)."""
    prepo = ProgramRepository(repo.conn)
    version = prepo.version_at(request.operation_time)
    promo_pct = prepo.promotion_percent(request.promotion_code) if request.promotion_code else None
    calc = calculate(version.program if version else Program(), request.lines,
                     accumulation=ledger.balance(Measure.ACCUMULATION), to_spend=request.bonus_spent,
                     promotion_percent=promo_pct, strict=True)
    if request.accrued_given and request.bonus_accrued != calc.accrued:
        raise errors.ValidationError(f"BonusAccrued {request.bonus_accrued} disagrees with the program's "
                                     f"calculation of the lines: {calc.accrued} (omit it to let the server calculate)")
    rows = [(line, (r.max_payment, r.spent, r.accrued)) for line, r in zip(request.lines, calc.lines)]
    return dataclasses.replace(request, bonus_accrued=calc.accrued), rows


def return_with_lines(repo, request: OperationRequest) -> tuple[OperationRequest, LineRows]:
    """The share of the original's lines a Return with lines takes back: per line, pro rata to the
    quantity returned, cumulative across the sale's returns (the last return of a line takes what is
    left, so they add up to the kopeck)."""
    sale = repo.get_operation(request.original_operation_id)
    if sale is None or sale["kind"] != Kind.SALE.value:
        raise errors.OriginalNotFound(f"no sale with OperationId {request.original_operation_id}")
    prepo = ProgramRepository(repo.conn)
    original = {r["line_number"]: r for r in prepo.lines_of(sale["id"])}
    if not original:
        raise errors.ValidationError(f"the sale {sale['id']} was registered without lines: return it by amounts "
                                     f"(without Lines)")
    earlier = [r["id"] for r in repo.conn.execute(
        _returns_of(sale["id"])).mappings()]
    done = prepo.returned_lines(earlier)
    rows: LineRows = []
    spent = accrued = ZERO
    for line in request.lines:
        sold = original.get(line.line_number)
        if sold is None:
            raise errors.ValidationError(f"Lines: the sale {sale['id']} has no line {line.line_number}")
        if line.article != sold["article"]:
            raise errors.ValidationError(f"Lines[LineNumber={line.line_number}].Article: {line.article!r}, "
                                         f"the sale's line has {sold['article']!r}")
        before = done.get(line.line_number, dict(quantity=Decimal("0.000"), sum=ZERO, spent=ZERO, accrued=ZERO))
        left = sold["quantity"] - before["quantity"]
        if line.quantity > left:
            raise errors.ValidationError(f"Lines[LineNumber={line.line_number}].Quantity {line.quantity} is above "
                                         f"what is left of the line: {left}")
        args = (before["quantity"], line.quantity, sold["quantity"])
        line_spent = share_of(sold["bonus_spent"], before["spent"], *args)
        line_accrued = share_of(sold["bonus_accrued"], before["accrued"], *args)
        line_sum = share_of(sold["sum"], before["sum"], *args)
        spent += line_spent
        accrued += line_accrued
        kept = ReceiptLine(line.line_number, sold["article"], sold["group_name"], line.quantity, sold["price"],
                           line_sum)
        rows.append((kept, (ZERO, line_spent, line_accrued)))
    for given, name, value in ((request.spent_given, "BonusSpent", spent),
                               (request.accrued_given, "BonusAccrued", accrued)):
        asked = request.bonus_spent if name == "BonusSpent" else request.bonus_accrued
        if given and asked != value:
            raise errors.ValidationError(f"{name} {asked} disagrees with the returned lines' share: {value} "
                                         f"(omit it to let the server calculate)")
    return dataclasses.replace(request, bonus_spent=spent, bonus_accrued=accrued), rows


def _returns_of(sale_id: str):
    from sqlalchemy import select

    from ..adapters.db import operations

    return select(operations.c.id).where(operations.c.original_operation_id == sale_id,
                                         operations.c.kind == Kind.RETURN.value)


def save_lines(repo, operation_id: str, rows: LineRows) -> None:
    if not rows:
        return
    flush = getattr(repo, "flush", None)  # a batch repository writes the operation first
    if flush is not None:
        flush()
    ProgramRepository(repo.conn).insert_lines(operation_id, [r[0] for r in rows], [r[1] for r in rows])


def receipt(engine, operation_id: str):
    """An operation with its lines (for `kkmtransfer receipts show`)."""
    from .unit_of_work import UnitOfWork

    with UnitOfWork(engine) as uow:
        op = uow.repo.get_operation(operation_id)
        if op is None:
            raise errors.OriginalNotFound(f"no operation {operation_id}")
        lines = ProgramRepository(uow.conn).lines_of(operation_id)
        returns = [dict(r) for r in uow.conn.execute(_returns_of(operation_id)).mappings()]
        return dict(op), [dict(x) for x in lines], [r["id"] for r in returns]
