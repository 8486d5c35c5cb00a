"""Lots carry the WriteOff document that took them (``expiry_document_id``), and the due-expiry index is
keyed on that mark instead of ``remaining``: an update of a lot's remaining (every sale, every journal row)
touches no indexed column and can be a HOT update; ``fillfactor = 70`` leaves room on the lots' pages for it
(PostgreSQL; pages written before keep their fill until they are rewritten).

The write-off takes each expired lot once (``expires_at <= cutoff AND expiry_document_id IS NULL``), burns
what it holds and marks it. Backfill: a lot an earlier night burnt (an ``expiry`` entry under a nightly Expiry
line, i.e. an operation of a WriteOff document) gets that document's id. Lots that expired empty, or whose
late credit burnt at once in its own operation, stay unmarked: the next night takes them once, marks them and
writes nothing for them (they hold nothing, and nothing can land in a burnt lot without burning at once).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_DUE = "expiry_document_id IS NULL AND expires_at IS NOT NULL"
_OLD_DUE = "remaining > 0"

# the WriteOff document of the nightly Expiry line that burnt each lot (a lot burns once: its remaining is 0
# after it). UPDATE ... FROM works on PostgreSQL and on SQLite >= 3.33.
_BACKFILL = """
UPDATE lots SET expiry_document_id = burnt.document_id
FROM (SELECT e.lot_id, min(o.document_id) AS document_id
      FROM entries e JOIN operations o ON o.id = e.operation_id
      JOIN documents d ON d.id = o.document_id
      WHERE e.role = 'expiry' AND o.kind = 'Expiry' AND o.source = 'Nightly' AND d.kind = 'WriteOff'
      GROUP BY e.lot_id) AS burnt
WHERE lots.id = burnt.lot_id AND lots.expires_at IS NOT NULL
"""


def upgrade() -> None:
    with op.batch_alter_table("lots") as batch:
        batch.add_column(sa.Column("expiry_document_id", sa.String(36)))
    op.execute(_BACKFILL)
    op.drop_index("ix_lots_due_expiry", "lots")
    due = sa.text(_DUE)
    op.create_index("ix_lots_due_expiry", "lots", ["expires_at", "id"], postgresql_where=due, sqlite_where=due)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE lots SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE lots RESET (fillfactor)")
    op.drop_index("ix_lots_due_expiry", "lots")
    with op.batch_alter_table("lots") as batch:
        batch.drop_column("expiry_document_id")
    due = sa.text(_OLD_DUE)
    op.create_index("ix_lots_due_expiry", "lots", ["expires_at", "id"], postgresql_where=due, sqlite_where=due)
