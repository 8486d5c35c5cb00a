"""The migrations build exactly the schema the code declares, on SQLite and on PostgreSQL."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from kkmtransfer.adapters.db import metadata
from kkmtransfer.adapters.migrate import current_revision, head_revision


def test_migrated_schema_matches_the_tables_in_code(engine, database_url):
    assert current_revision(engine) == head_revision(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == [], diff
