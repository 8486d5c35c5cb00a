"""``action_cards`` with ``fillfactor = 45`` (PostgreSQL): a bonus action records its cards as pending when it
starts and marks each one done (state and amount) in its batch. The columns it updates are in no index, so
with room left on the page for the row's new version the update is a HOT update (no new entry in the primary
key, a third of the WAL); at the default fill the page is full and every row's new version goes to another page
with a new index entry. 45, not 50: a card's done row (with its amount) is about a tenth longer than its
pending row. Pages written before keep their fill until they are rewritten.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE action_cards SET (fillfactor = 45)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE action_cards RESET (fillfactor)")
