"""Life rules (promotions, card rules) and the nightly regulation's documents.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

from kkmtransfer.adapters.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cards") as batch:
        batch.add_column(sa.Column("accumulation_delay_days", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("accumulation_lifetime_days", sa.Integer()))
        batch.add_column(sa.Column("count_delay_days", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("count_lifetime_days", sa.Integer()))
    op.create_table(
        "promotions",
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("valid_from", sa.Date()),
        sa.Column("valid_to", sa.Date()),
        sa.Column("delay_days", sa.Integer(), nullable=False),
        sa.Column("lifetime_days", sa.Integer()),
        sa.Column("until_date", sa.Date()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("code", name="pk_promotions"),
    )
    op.create_table(
        "documents",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("business_date", sa.Date(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime()),
        sa.Column("leased_by", sa.String(64)),
        sa.Column("lease_until", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_documents"),
        sa.UniqueConstraint("kind", "business_date", name="uq_documents_kind_date"),
    )
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("document_id", sa.String(36)))
    op.create_index("ix_operations_document_id", "operations", ["document_id"])
    with op.batch_alter_table("lots") as batch:
        batch.add_column(sa.Column("accrual_document_id", sa.String(36)))
    due = sa.text("remaining > 0")
    op.create_index("ix_lots_due_expiry", "lots", ["expires_at", "id"], postgresql_where=due, sqlite_where=due)
    pending = sa.text("accrual_document_id IS NULL AND available_from IS NOT NULL")
    op.create_index("ix_lots_due_accrual", "lots", ["available_from", "card_number", "id"],
                    postgresql_where=pending,
                    sqlite_where=pending)


def downgrade() -> None:
    op.drop_index("ix_lots_due_accrual", "lots")
    op.drop_index("ix_lots_due_expiry", "lots")
    with op.batch_alter_table("lots") as batch:
        batch.drop_column("accrual_document_id")
    op.drop_index("ix_operations_document_id", "operations")
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("document_id")
    op.drop_table("documents")
    op.drop_table("promotions")
    with op.batch_alter_table("cards") as batch:
        for column in ("count_lifetime_days", "count_delay_days", "accumulation_lifetime_days",
                       "accumulation_delay_days"):
            batch.drop_column(column)
