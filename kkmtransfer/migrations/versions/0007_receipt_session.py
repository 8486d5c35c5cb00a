"""The receipt session: the versioned bonus program, promotions' percent, holds, receipt lines.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

from kkmtransfer.adapters.db import Cents, Thousandths, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("promotions") as batch:
        batch.add_column(sa.Column("accrual_percent", Cents()))
    op.create_table(
        "program_versions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("valid_from", UTCDateTime(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("note", sa.String(500)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_program_versions"),
    )
    op.create_index("ix_program_versions_valid_from", "program_versions", ["valid_from"])
    op.create_table(
        "holds",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("hold_operation_id", sa.String(36), nullable=False),
        sa.Column("card_number", sa.String(32), nullable=False),
        sa.Column("kkm", sa.String(64), nullable=False),
        sa.Column("amount", Cents(), nullable=False),
        sa.Column("spend_code", sa.String(64)),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("settled_at", UTCDateTime()),
        sa.Column("settled_by", sa.String(64)),
        sa.PrimaryKeyConstraint("id", name="pk_holds"),
        sa.ForeignKeyConstraint(["hold_operation_id"], ["operations.id"], name="fk_holds_hold_operation_id_operations"),
        sa.ForeignKeyConstraint(["card_number"], ["cards.number"], name="fk_holds_card_number_cards"),
    )
    op.create_index("ix_holds_status_expires", "holds", ["status", "expires_at"])
    op.create_table(
        "receipt_lines",
        sa.Column("operation_id", sa.String(36), nullable=False),
        sa.Column("line_number", sa.Integer(), nullable=False),
        sa.Column("article", sa.String(64), nullable=False),
        sa.Column("group_name", sa.String(64)),
        sa.Column("quantity", Thousandths(), nullable=False),
        sa.Column("price", Cents(), nullable=False),
        sa.Column("sum", Cents(), nullable=False),
        sa.Column("max_payment", Cents(), nullable=False),
        sa.Column("bonus_spent", Cents(), nullable=False),
        sa.Column("bonus_accrued", Cents(), nullable=False),
        sa.PrimaryKeyConstraint("operation_id", "line_number", name="pk_receipt_lines"),
        sa.ForeignKeyConstraint(["operation_id"], ["operations.id"], name="fk_receipt_lines_operation_id_operations"),
    )


def downgrade() -> None:
    op.drop_table("receipt_lines")
    op.drop_index("ix_holds_status_expires", table_name="holds")
    op.drop_table("holds")
    op.drop_index("ix_program_versions_valid_from", table_name="program_versions")
    op.drop_table("program_versions")
    with op.batch_alter_table("promotions") as batch:
        batch.drop_column("accrual_percent")
