"""SQL access for the bonus program, holds and receipt lines (the receipt session)."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from ..domain.model import Role
from ..domain.program import ProgramVersion, change_from_json, change_to_json, fold
from .db import entries, holds, program_versions, promotions, receipt_lines


class ProgramRepository:
    def __init__(self, conn: Connection):
        self.conn = conn

    # -- the program ---------------------------------------------------------------------------
    def versions(self, until: datetime | None = None) -> list[ProgramVersion]:
        """Every version (or those started by ``until``), each the program in force from its start."""
        stmt = select(program_versions.c.valid_from, program_versions.c.body).order_by(
            program_versions.c.valid_from, program_versions.c.id)
        if until is not None:
            stmt = stmt.where(program_versions.c.valid_from <= until)
        return fold((r.valid_from, change_from_json(r.body)) for r in self.conn.execute(stmt))

    def version_at(self, when: datetime) -> ProgramVersion | None:
        versions = self.versions(until=when)
        return versions[-1] if versions else None

    def insert_change(self, valid_from: datetime, change: dict, now: datetime, note: str | None) -> None:
        self.conn.execute(insert(program_versions).values(valid_from=valid_from, body=change_to_json(change),
                                                          note=note, created_at=now))

    def lock_program(self) -> None:
        """Serialise program changes (PostgreSQL: an advisory transaction lock; SQLite writers are serial)."""
        if self.conn.dialect.name == "postgresql":
            self.conn.exec_driver_sql("SELECT pg_advisory_xact_lock(72707)")

    # -- promotions' percent ---------------------------------------------------------------------
    def promotion_percent(self, code: str) -> Decimal | None:
        return self.conn.execute(select(promotions.c.accrual_percent).where(promotions.c.code == code)).scalar()

    def set_promotion_percent(self, code: str, value: Decimal | None) -> int:
        return self.conn.execute(update(promotions).where(promotions.c.code == code)
                                 .values(accrual_percent=value)).rowcount

    # -- receipt lines ---------------------------------------------------------------------------
    def insert_lines(self, operation_id: str, lines, results) -> None:
        """``lines``: ReceiptLine (or for a return: (line, quantity, sum)); ``results``: per line
        (max_payment, spent, accrued)."""
        rows = []
        for line, (max_payment, spent, accrued) in zip(lines, results):
            rows.append(dict(operation_id=operation_id, line_number=line.line_number, article=line.article,
                             group_name=line.group, quantity=line.quantity, price=line.price, sum=line.sum,
                             max_payment=max_payment, bonus_spent=spent, bonus_accrued=accrued))
        if rows:
            self.conn.execute(insert(receipt_lines), rows)

    def lines_of(self, operation_id: str):
        return self.conn.execute(select(receipt_lines).where(receipt_lines.c.operation_id == operation_id)
                                 .order_by(receipt_lines.c.line_number)).mappings().all()

    def returned_lines(self, return_ids: list[str]) -> dict[int, dict]:
        """Per original line number: quantity, sum, spent and accrued the given returns took back."""
        if not return_ids:
            return {}
        rows = self.conn.execute(
            select(receipt_lines.c.line_number, func.sum(receipt_lines.c.quantity).label("quantity"),
                   func.sum(receipt_lines.c.sum).label("sum"), func.sum(receipt_lines.c.bonus_spent).label("spent"),
                   func.sum(receipt_lines.c.bonus_accrued).label("accrued"))
            .where(receipt_lines.c.operation_id.in_(return_ids)).group_by(receipt_lines.c.line_number)).all()
        return {r.line_number: dict(quantity=r.quantity, sum=r.sum, spent=r.spent, accrued=r.accrued) for r in rows}

    # -- holds -----------------------------------------------------------------------------------
    def get_hold(self, hold_id: str, *, lock: bool = False):
        stmt = select(holds).where(holds.c.id == hold_id)
        if lock:
            stmt = stmt.with_for_update()
        return self.conn.execute(stmt).mappings().first()

    def insert_hold(self, **values) -> None:
        self.conn.execute(insert(holds).values(**values))

    def settle_hold(self, hold_id: str, status: str, now: datetime, by: str) -> None:
        self.conn.execute(update(holds).where(holds.c.id == hold_id)
                          .values(status=status, settled_at=now, settled_by=by))

    def holds_list(self, *, status: str | None = None, expired_before: datetime | None = None,
                   limit: int | None = None):
        stmt = select(holds).order_by(holds.c.created_at, holds.c.id)
        if status:
            stmt = stmt.where(holds.c.status == status)
        if expired_before is not None:
            stmt = stmt.where(holds.c.expires_at <= expired_before)
        if limit:
            stmt = stmt.limit(limit)
        return self.conn.execute(stmt).mappings().all()

    def held_sources(self, hold_operation_id: str) -> list[tuple[int, Decimal]]:
        """(lot id, amount still held) per lot the hold took from, in the order it took them."""
        rows = self.conn.execute(
            select(entries.c.lot_id, func.sum(entries.c.amount).label("amount"), func.min(entries.c.id).label("first"))
            .where(entries.c.operation_id == hold_operation_id,
                   entries.c.role.in_([Role.HOLD.value, Role.RELEASE.value]))
            .group_by(entries.c.lot_id).order_by("first")).all()
        return [(r.lot_id, -r.amount) for r in rows if r.amount < 0]
