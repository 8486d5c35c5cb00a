"""Console: an operator's session epoch (a password change or a disabling ends the old sessions) and the
journal files taken from the inbox (uploaded through the console or dropped there), with their state.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

from kkmtransfer.adapters.db import BigId, UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operators") as batch:
        batch.add_column(sa.Column("session_epoch", sa.Integer(), nullable=False, server_default=sa.text("0")))
    op.create_table(
        "journal_files",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger()),
        sa.Column("rows", sa.Integer()),
        sa.Column("processed", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("applied", sa.Integer()),
        sa.Column("already", sa.Integer()),
        sa.Column("rejected", sa.Integer()),
        sa.Column("error", sa.Text()),
        sa.Column("uploaded_by", sa.String(64)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("finished_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_journal_files"),
    )
    op.create_index("ix_journal_files_name", "journal_files", ["name", "id"])


def downgrade() -> None:
    op.drop_index("ix_journal_files_name", table_name="journal_files")
    op.drop_table("journal_files")
    with op.batch_alter_table("operators") as batch:
        batch.drop_column("session_epoch")
