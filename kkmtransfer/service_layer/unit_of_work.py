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

    def __init__(self, engine: Engine, *, write: bool = False, snapshot: bool = False,
                 single_statement: bool = False):
        self.engine = engine
        self.write = write
        self.snapshot = snapshot  # read-only, every statement sees one snapshot (REPEATABLE READ)
        # a use case that reads with ONE statement (which sees one snapshot by itself): on PostgreSQL no
        # BEGIN and no ROLLBACK around it (autocommit), one round trip instead of three
        self.single_statement = single_statement and not write and not snapshot
        self.conn = None
        self.repo: Repository | None = None

    def __enter__(self) -> "UnitOfWork":
        self.conn = self.engine.connect().execution_options(kkm_write=self.write)
        if self.snapshot and self.engine.dialect.name == "postgresql":
            # SQLite: a deferred transaction in WAL mode reads one snapshot already
            self.conn = self.conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        self._autocommit = None
        if self.single_statement and self.engine.dialect.name == "postgresql":
            # psycopg2's own switch, which is client-side only; SQLAlchemy's AUTOCOMMIT isolation level
            # would send SET default_transaction_isolation when the connection goes back to the pool
            self._autocommit = self.conn.connection.dbapi_connection
            self._autocommit.autocommit = True
        self._tx = self.conn.begin()
        self.repo = Repository(self.conn)
        return self

    def commit(self) -> None:
        self._tx.commit()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._tx.is_active:
                self._tx.rollback()  # with autocommit on: nothing is sent
        finally:
            try:
                if self._autocommit is not None and not self._autocommit.closed:
                    self._autocommit.autocommit = False
            finally:
                self.conn.close()
