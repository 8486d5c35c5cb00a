"""SQL for SMS spend codes, on the caller's connection (the caller's transaction)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from ..domain.spend_codes import CodeStatus, StoredCode
from .db import cards, server_secret, spend_code_events, spend_codes

# Codes a check can meet: the newest of these is the card's "latest" code.
_DELIVERED = [s.value for s in (CodeStatus.ACTIVE, CodeStatus.UNCERTAIN, CodeStatus.USED, CodeStatus.LOCKED,
                                CodeStatus.SUPERSEDED)]


class SpendCodeRepo:
    def __init__(self, conn: Connection):
        self.conn = conn

    # -- codes -------------------------------------------------------------------------------
    def codes_since(self, card_number: str, since: datetime) -> list[tuple[datetime, CodeStatus]]:
        rows = self.conn.execute(
            select(spend_codes.c.created_at, spend_codes.c.status)
            .where(spend_codes.c.card_number == card_number, spend_codes.c.created_at > since))
        return [(at, CodeStatus(status)) for at, status in rows]

    def insert_code(self, **values) -> int:
        return self.conn.execute(insert(spend_codes).values(**values).returning(spend_codes.c.id)).scalar_one()

    def update_code(self, code_id: int, **values) -> int:
        return self.conn.execute(update(spend_codes).where(spend_codes.c.id == code_id).values(**values)).rowcount

    def supersede_older(self, card_number: str, newer_id: int, now: datetime) -> None:
        """Older codes of the card that could still be used stop working: only the newest SMS counts."""
        self.conn.execute(
            update(spend_codes)
            .where(spend_codes.c.card_number == card_number, spend_codes.c.id < newer_id,
                   spend_codes.c.status.in_([CodeStatus.ACTIVE.value, CodeStatus.UNCERTAIN.value,
                                             CodeStatus.PENDING.value]))
            .values(status=CodeStatus.SUPERSEDED.value, closed_at=now))

    def latest(self, card_number: str):
        """The card's newest delivered code as (id, StoredCode), or None."""
        row = self.conn.execute(
            select(spend_codes).where(spend_codes.c.card_number == card_number,
                                      spend_codes.c.status.in_(_DELIVERED))
            .order_by(spend_codes.c.id.desc()).limit(1)).mappings().first()
        if row is None:
            return None
        return row["id"], StoredCode(status=CodeStatus(row["status"]), code_hash=row["code_hash"],
                                     expires_at=row["expires_at"], tries=row["tries"])

    def count_try(self, code_id: int, lock: bool, now: datetime) -> None:
        values = dict(tries=spend_codes.c.tries + 1)
        if lock:
            values.update(status=CodeStatus.LOCKED.value, closed_at=now)
        self.conn.execute(update(spend_codes).where(spend_codes.c.id == code_id).values(**values))

    # -- audit -------------------------------------------------------------------------------
    def add_event(self, **values) -> None:
        if values.get("detail"):
            values["detail"] = values["detail"][:500]
        self.conn.execute(insert(spend_code_events).values(**values))

    def events(self, since: datetime, until: datetime, card_number: str | None = None, limit: int = 1000):
        stmt = (select(spend_code_events)
                .where(spend_code_events.c.at >= since, spend_code_events.c.at < until)
                .order_by(spend_code_events.c.at, spend_code_events.c.id).limit(limit))
        if card_number:
            stmt = stmt.where(spend_code_events.c.card_number == card_number)
        return self.conn.execute(stmt).mappings().all()

    # -- cards -------------------------------------------------------------------------------
    def set_required(self, first: str, last: str | None, required: bool) -> int:
        from ..service_layer.card_range import range_condition

        stmt = update(cards).values(spend_code_required=required)
        stmt = stmt.where(cards.c.number == first) if last is None else stmt.where(range_condition(first, last))
        return self.conn.execute(stmt).rowcount

    def count_between(self, first: str, last: str) -> tuple[int, int]:
        """(cards in the range, of which already requiring a code); the range as card_range reads it."""
        from ..service_layer.card_range import range_condition

        rows = self.conn.execute(select(cards.c.spend_code_required).where(range_condition(first, last)))
        flags = [bool(r[0]) for r in rows]
        return len(flags), sum(flags)

    # -- the installation's secret (adapters/server_ids.py) -------------------------------------------
    def installation_secret(self, create: bool) -> str | None:
        """The installation's random secret (table server_secret); made now when ``create`` and missing."""
        if create:
            from .server_ids import namespace

            namespace(self.conn)  # makes the secret if this is the first use
        return self.conn.execute(select(server_secret.c.secret).where(server_secret.c.id == 1)).scalar()
