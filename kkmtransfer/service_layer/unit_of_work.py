"""One transaction per use case."""
from __future__ import annotations

from sqlalchemy.engine import Engine

from ..adapters.repository import Repository


class UnitOfWork:
    """``with UnitOfWork(engine, write=True) as uow: ...; uow.commit()``.

    Leaving the block without ``commit()`` rolls everything back, so a use case that raises has
    written nothing. ``write=True`` makes SQLite take its write lock at BEGIN (no lock upgrades, no
    deadlocks between writers); on PostgreSQL writers lock the card row they work on.
    """

    def __init__(self, engine: Engine, *, write: bool = False, snapshot: bool = False):
        self.engine = engine
        self.write = write
        self.snapshot = snapshot  # read-only, every statement sees one snapshot (REPEATABLE READ)
        self.conn = None
        self.repo: Repository | None = None

    def __enter__(self) -> "UnitOfWork":
        self.conn = self.engine.connect().execution_options(kkm_write=self.write)
        if self.snapshot and self.engine.dialect.name == "postgresql":
            # SQLite: a deferred transaction in WAL mode reads one snapshot already
            self.conn = self.conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        self._tx = self.conn.begin()
        self.repo = Repository(self.conn)
        return self

    def commit(self) -> None:
        self._tx.commit()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._tx.is_active:
                self._tx.rollback()
        finally:
            self.conn.close()
