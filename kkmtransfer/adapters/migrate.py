"""Schema migrations (Alembic), run from code so that no alembic.ini is needed at run time."""
from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


UPGRADE_LOCK = 0x6B6B6D5550  # "kkmUP": the PostgreSQL advisory lock held while the schema is upgraded
log = logging.getLogger(__name__)


def upgrade(url: str, revision: str = "head", on_wait: Callable[[str], None] | None = None) -> None:
    """Upgrade the schema. Several at once (every host starting together) are serialised: on PostgreSQL
    by an advisory lock, on SQLite by an exclusive lock on a file beside the database (pysqlite runs DDL
    outside a transaction, so the database's write lock does not); the later ones wait, then find the
    schema at head and do nothing. ``on_wait`` is told (one line) when another upgrade is running."""
    if not url.startswith("postgresql"):
        with _sqlite_upgrade_lock(url, on_wait):
            command.upgrade(alembic_config(url), revision)
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": UPGRADE_LOCK}).scalar():
                message = "another upgrade is running: waiting for it to finish"
                log.warning(message)
                if on_wait:
                    on_wait(message)
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": UPGRADE_LOCK})
            try:
                command.upgrade(alembic_config(url), revision)
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": UPGRADE_LOCK})
    finally:
        engine.dispose()


@contextmanager
def _sqlite_upgrade_lock(url: str, on_wait: Callable[[str], None] | None):
    """SQLite: upgrades of one database file, one at a time. pysqlite runs DDL outside a transaction, so the
    database's write lock does not keep two upgrades from creating the same table (seen: "table ... already
    exists" when four hosts upgrade at once); an exclusive lock on ``<database>.upgrade-lock`` does."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    path = Path(database).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.upgrade-lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = "another upgrade is running: waiting for it to finish"
            log.warning(message)
            if on_wait:
                on_wait(message)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def head_revision(url: str) -> str:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
