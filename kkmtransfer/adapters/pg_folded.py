"""PostgreSQL: a sale's transaction in two round trips instead of four.

psycopg2 sends BEGIN before a transaction's first statement and COMMIT at ``commit()``, each in a round trip
of its own: a sale was BEGIN, the card's lock and read, the write, COMMIT. A round trip costs both processes
a wake-up and about 25 µs of CPU each on an idle machine, more under load (docs/performance.md §5.8).

``FoldingRepository`` (``UnitOfWork(fold=True)``) runs the DBAPI connection in autocommit, so that psycopg2
sends no transaction control of its own, and sends it itself:

- BEGIN travels in front of the transaction's first statement when that is the card's lock and read
  (``Repository.lock_card_for``): ``BEGIN; EXECUTE kkm_lock ...; EXECUTE kkm_lock_2 ...``;
- the operation's write (``Repository._write_later``) is kept until the commit and sent with COMMIT
  behind it: ``...; EXECUTE kkm_sale (...); COMMIT``.

Whatever else the transaction runs (SQLAlchemy's statements: the user row, a hold, a spend code, receipt
lines, a return's history) goes through ``conn``, which first sends what is pending (the BEGIN alone, the
kept write): the statements run in the same order and inside the same transaction as without folding. A
failed statement leaves the rest of its round trip unexecuted (PostgreSQL skips what follows an error in a
query string), so a failed write never commits. ``release()`` rolls back an open transaction with an
explicit ROLLBACK, and a connection whose server is not idle afterwards is invalidated rather than handed
back to the pool.
"""
from __future__ import annotations

from sqlalchemy.engine import Connection

from .pg_raw import _IDLE, _on_cursor, _raw_path, _Write
from .repository import Repository


def can_fold(conn: Connection) -> bool:
    """Folding needs the raw path: PostgreSQL through psycopg2 with nobody listening to statements."""
    return _raw_path(conn)


class FoldingRepository(Repository):
    """A ``Repository`` on a connection whose transaction control it sends itself (see the module)."""

    def __init__(self, conn: Connection):
        self._dbapi = conn.connection.dbapi_connection
        self._dbapi.autocommit = True  # psycopg2 sends no BEGIN, COMMIT or ROLLBACK of its own (client side)
        self._begin_pending = True  # the transaction's BEGIN is not sent yet
        self._open = False  # BEGIN sent, and no COMMIT or ROLLBACK has ended that transaction yet
        self._kept: tuple[_Write, dict] | None = None  # the last write, to be sent with the next statement
        super().__init__(conn)

    @property
    def conn(self) -> Connection:
        """The connection, for a statement of SQLAlchemy's: what is pending is sent first."""
        if self._begin_pending or self._kept is not None:
            self._send_pending()
        return self._conn

    @conn.setter
    def conn(self, value: Connection) -> None:
        self._conn = value

    def _send_pending(self) -> None:
        if self._begin_pending:
            self._begin_pending, self._open = False, True
            _on_cursor(self._conn, "BEGIN", None, fetch=False)
        if self._kept is not None:
            self._send_kept()

    def _send_kept(self, suffix: str = "") -> None:
        write, params = self._kept
        self._kept = None  # sent once, even if it fails
        write.execute(self._conn, params, suffix=suffix)

    def _begin_with(self) -> str:
        if not self._begin_pending:
            return ""
        self._begin_pending, self._open = False, True  # open from here: a failure is rolled back
        return "BEGIN; "

    def _write_later(self, write: _Write, params: dict) -> None:
        if self._begin_pending or self._kept is not None:
            self._send_pending()
        self._kept = (write, params)

    def commit(self) -> None:
        """COMMIT, with the kept write in front of it in the same round trip. After it, a further statement
        begins a new transaction (as psycopg2 would)."""
        if self._kept is not None:
            self._send_kept(suffix="; COMMIT")
        elif self._open:
            _on_cursor(self._conn, "COMMIT", None, fetch=False)
        self._open, self._begin_pending = False, True

    def release(self) -> None:
        """The end of the unit of work: an open transaction rolled back, autocommit off again. A connection
        that failed to roll back, or whose server is not idle after it, is invalidated (never pooled)."""
        self._kept = None
        conn, dbapi = self._conn, self._dbapi
        if conn.invalidated or dbapi.closed:
            return
        try:
            if self._open:
                self._open = False
                cursor = dbapi.cursor()
                cursor.execute("ROLLBACK")
                cursor.close()
            if dbapi.get_transaction_status() != _IDLE:
                raise RuntimeError("the server's transaction is still open")
            dbapi.autocommit = False
        except Exception:  # noqa: BLE001 - whatever it was, this connection is not to be pooled
            conn.invalidate()
