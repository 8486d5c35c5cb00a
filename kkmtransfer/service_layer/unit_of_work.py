"""One transaction per use case."""
from __future__ import annotations

from sqlalchemy.engine import Connection, Engine

from ..adapters.pg_folded import FoldingRepository, can_fold
from ..adapters.repository import Repository


class UnitOfWork:
    """``with UnitOfWork(engine, write=True) as uow: ...; uow.commit()``.

    Leaving the block without ``commit()`` rolls everything back, so a use case that raises has
    written nothing. ``write=True`` makes SQLite take its write lock at BEGIN (no lock upgrades, no
    deadlocks between writers); on PostgreSQL writers lock the card row they work on.

    ``fold=True`` (a writer whose first statement is the card's lock and read, and whose last is its
    operation's write: RegisterOperation, ReserveBonus): on PostgreSQL's raw path the BEGIN travels with the lock and
    the COMMIT with the write, two round trips fewer (``adapters.pg_folded``); elsewhere it changes nothing.
    """

    def __init__(self, engine: Engine, *, write: bool = False, snapshot: bool = False,
                 single_statement: bool = False, fold: bool = False):
        self.engine = engine
        self.write = write
        self.snapshot = snapshot  # read-only, every statement sees one snapshot (REPEATABLE READ)
        # a use case that reads with ONE statement (which sees one snapshot by itself): on PostgreSQL no
        # BEGIN and no ROLLBACK around it (autocommit), one round trip instead of three
        self.single_statement = single_statement and not write and not snapshot
        self.fold = fold and write and not snapshot
        self._conn: Connection | None = None
        self._folding: FoldingRepository | None = None
        self.repo: Repository | None = None

    @property
    def conn(self) -> Connection | None:
        """The transaction's connection (when folding, what is pending is sent first)."""
        return self._folding.conn if self._folding is not None else self._conn

    def __enter__(self) -> "UnitOfWork":
        conn = self._conn = self.engine.connect().execution_options(kkm_write=self.write)
        if self.snapshot and self.engine.dialect.name == "postgresql":
            # SQLite: a deferred transaction in WAL mode reads one snapshot already
            conn = self._conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        self._autocommit = None
        try:
            if self.single_statement and self.engine.dialect.name == "postgresql":
                # psycopg2's own switch, which is client-side only; SQLAlchemy's AUTOCOMMIT isolation level
                # would send SET default_transaction_isolation when the connection goes back to the pool
                self._autocommit = conn.connection.dbapi_connection
                self._autocommit.autocommit = True
            if self.fold and can_fold(conn):
                self._folding = FoldingRepository(conn)
            self._tx = conn.begin()
        except BaseException:
            self._release()
            raise
        self.repo = self._folding or Repository(conn)
        return self

    def commit(self) -> None:
        if self._folding is not None:
            self._folding.commit()
        self._tx.commit()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._tx.is_active:
                self._tx.rollback()  # with autocommit on: nothing is sent
        finally:
            self._release()

    def _release(self) -> None:
        try:
            if self._folding is not None:
                self._folding.release()  # ROLLBACK if still open; autocommit off again
            if self._autocommit is not None and not self._autocommit.closed:
                self._autocommit.autocommit = False
        finally:
            self._conn.close()
