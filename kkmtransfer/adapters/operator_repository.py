"""SQL of the back-office operators and of the login throttle (tables ``operators``, ``login_throttle``)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from .db import login_throttle, operators


class OperatorRepository:
    def __init__(self, conn: Connection):
        self.conn = conn

    def get(self, name: str):
        return self.conn.execute(select(operators).where(operators.c.name == name)).mappings().first()

    def all(self):
        return list(self.conn.execute(select(operators).order_by(operators.c.name)).mappings())

    def insert(self, **values) -> None:
        self.conn.execute(insert(operators).values(**values))

    def update(self, name: str, **values) -> bool:
        return self.conn.execute(update(operators).where(operators.c.name == name).values(**values)).rowcount > 0

    # -- throttle ----------------------------------------------------------------------------
    def throttle(self, name: str, lock: bool = False):
        stmt = select(login_throttle).where(login_throttle.c.name == name)
        if lock:
            stmt = stmt.with_for_update()
        return self.conn.execute(stmt).mappings().first()

    def save_throttle(self, name: str, failures: int, locked_until: datetime | None, now: datetime,
                      exists: bool) -> None:
        values = dict(failures=failures, locked_until=locked_until, updated_at=now)
        if exists:
            self.conn.execute(update(login_throttle).where(login_throttle.c.name == name).values(**values))
        else:
            self.conn.execute(insert(login_throttle).values(name=name, **values))

    def clear_throttle(self, name: str) -> None:
        self.conn.execute(login_throttle.delete().where(login_throttle.c.name == name))
