"""The audit trail: who changed what in the back office.

``record(conn, actor, action, obj, **details)`` writes one row inside the caller's transaction, so the
change and its audit row commit or roll back together. ``record_now(engine, ...)`` is for changes made
by service code that does not take an actor: it writes the row in a transaction of its own right after
the change. Online and offline operations carry their actor in ``operations.actor`` instead.
"""
from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass
from datetime import date, datetime, timezone

from sqlalchemy import insert, select

from ..adapters.db import audit
from ..domain import errors

ACTOR_ENV = "KKMTRANSFER_ACTOR"


def os_actor() -> str:
    """The OS user running the command (``KKMTRANSFER_ACTOR`` overrides it)."""
    name = os.environ.get(ACTOR_ENV)
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment nor in the password database
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _details(details: dict) -> str | None:
    clean = {k: v for k, v in details.items() if v is not None}
    return json.dumps(clean, ensure_ascii=False, sort_keys=True, default=str) if clean else None


def record(conn, actor: str | None, action: str, obj: str | None = None, *, at: datetime | None = None,
           **details) -> None:
    """One audit row in the caller's transaction."""
    conn.execute(insert(audit).values(
        at=at or datetime.now(timezone.utc), actor=(actor or os_actor())[:255], action=action[:64],
        object=None if obj is None else str(obj)[:255], details=_details(details)))


def record_now(engine, actor: str | None, action: str, obj: str | None = None, **details) -> None:
    """One audit row in a transaction of its own (for changes whose service code takes no actor)."""
    from .unit_of_work import UnitOfWork

    with UnitOfWork(engine, write=True) as uow:
        record(uow.conn, actor, action, obj, **details)
        uow.commit()


@dataclass(frozen=True)
class AuditRow:
    at: datetime
    actor: str
    action: str
    object: str | None
    details: dict


def rows(engine, first: date | None = None, last: date | None = None, actor: str | None = None, tz=None,
         limit: int | None = None, *, action: str | None = None, newest_first: bool = False,
         offset: int = 0) -> list[AuditRow]:
    """The audit rows, oldest first (or newest first); first/last are days in the business time zone
    ``tz``; ``action`` keeps one action's rows (e.g. cards.block)."""
    from ..domain.ledger import day_bounds
    from .unit_of_work import UnitOfWork

    if first and last and last < first:
        raise errors.ValidationError(f"--from {first} is after --to {last}")
    stmt = select(audit).order_by(*((audit.c.at.desc(), audit.c.id.desc()) if newest_first
                                    else (audit.c.at, audit.c.id)))
    if first or last:
        start, end = day_bounds(first or date(1970, 1, 1), last or date(9998, 12, 31), tz or timezone.utc)
        if first:
            stmt = stmt.where(audit.c.at >= start)
        if last:
            stmt = stmt.where(audit.c.at < end)
    if actor:
        stmt = stmt.where(audit.c.actor == actor)
    if action:
        stmt = stmt.where(audit.c.action == action)
    if offset:
        stmt = stmt.offset(offset)
    if limit:
        stmt = stmt.limit(limit)
    with UnitOfWork(engine) as uow:
        return [AuditRow(r.at, r.actor, r.action, r.object, json.loads(r.details) if r.details else {})
                for r in uow.conn.execute(stmt)]


CSV_HEADER = ["at", "actor", "action", "object", "details"]


def csv_cells(r: AuditRow) -> list:
    """A row of `report audit --csv` (and of the console's audit CSV): the time in UTC, ISO 8601."""
    details = json.dumps(r.details, ensure_ascii=False, sort_keys=True) if r.details else ""
    at = r.at.astimezone(timezone.utc).isoformat(timespec="seconds")
    return [at, r.actor, r.action, r.object or "", details]


def action_names(engine) -> list[str]:
    """The actions the trail has rows of (for a filter's choices)."""
    from .unit_of_work import UnitOfWork

    with UnitOfWork(engine) as uow:
        return sorted(uow.conn.execute(select(audit.c.action).distinct()).scalars())
