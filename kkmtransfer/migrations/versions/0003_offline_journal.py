"""Offline journals (keys of rows without an OperationId, rejected rows) and the billing start.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

from kkmtransfer.adapters.db import BigId, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journal_keys",
        sa.Column("kkm", sa.String(64), nullable=False),
        sa.Column("transaction_number", sa.String(64), nullable=False),
        sa.Column("transaction_time", UTCDateTime(), nullable=False),
        sa.Column("operation_id", sa.String(36), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("kkm", "transaction_number", "transaction_time", name="pk_journal_keys"),
    )
    op.create_table(
        "journal_rejects",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("row_key", sa.String(80), nullable=False),
        sa.Column("file_name", sa.String(255), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("raw_row", sa.Text(), nullable=False),
        sa.Column("fault_code", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_journal_rejects"),
        sa.UniqueConstraint("row_key", name="uq_journal_rejects_row_key"),
    )
    op.create_index("ix_journal_rejects_status", "journal_rejects", ["status", "id"])
    op.create_table(
        "billing_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("start_date", sa.Date(), nullable=False),
        sa.Column("enabled_at", UTCDateTime(), nullable=False),
        sa.Column("opening_file", sa.String(255)),
        sa.Column("cards", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_state"),
    )


def downgrade() -> None:
    op.drop_table("billing_state")
    op.drop_index("ix_journal_rejects_status", "journal_rejects")
    op.drop_table("journal_rejects")
    op.drop_table("journal_keys")
