"""SQL of the journal files taken from the inbox (table ``journal_files``): their state and progress."""
from __future__ import annotations

from sqlalchemy import func, insert, select, update

from .db import journal_files, journal_rejects


class JournalFilesRepository:
    def __init__(self, conn):
        self.conn = conn

    def add(self, **values) -> int:
        return int(self.conn.execute(insert(journal_files).values(**values)).inserted_primary_key[0])

    def open_row(self, name: str):
        """The newest row of ``name`` not finished (queued by an upload, or left processing by a crash)."""
        return self.conn.execute(
            select(journal_files).where(journal_files.c.name == name,
                                        journal_files.c.state.in_(["queued", "processing"]))
            .order_by(journal_files.c.id.desc()).limit(1)).mappings().first()

    def set(self, file_id: int, **values) -> None:
        self.conn.execute(update(journal_files).where(journal_files.c.id == file_id).values(**values))

    def names_unfinished(self) -> set[str]:
        return set(self.conn.execute(select(journal_files.c.name).where(
            journal_files.c.state.in_(["queued", "processing"]))).scalars())

    def page(self, offset: int, limit: int | None) -> tuple[int, list[dict]]:
        total = self.conn.execute(select(func.count()).select_from(journal_files)).scalar_one()
        rows = [dict(r) for r in self.conn.execute(
            select(journal_files).order_by(journal_files.c.id.desc()).offset(offset).limit(limit)).mappings()]
        return int(total), rows

    def pending_rejects(self, names: list[str]) -> dict[str, int]:
        if not names:
            return {}
        return dict(self.conn.execute(
            select(journal_rejects.c.file_name, func.count())
            .where(journal_rejects.c.status == "pending", journal_rejects.c.file_name.in_(names))
            .group_by(journal_rejects.c.file_name)).all())

    def exists_name(self, name: str) -> bool:
        return self.conn.execute(select(func.count()).select_from(journal_files)
                                 .where(journal_files.c.name == name)).scalar_one() > 0

