"""The deferred lots still to post, by card: a nightly Accrual batch finds its cards' due lots with one index
probe per card instead of a scan of every lot still due (which made each batch cost what was left).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pending = sa.text("accrual_document_id IS NULL AND available_from IS NOT NULL")
    op.create_index("ix_lots_due_accrual_card", "lots", ["card_number", "available_from", "id"],
                    postgresql_where=pending, sqlite_where=pending)


def downgrade() -> None:
    op.drop_index("ix_lots_due_accrual_card", "lots")
