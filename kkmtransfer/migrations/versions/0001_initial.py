"""The core ledger: users, cards, operations, lots, entries.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

from kkmtransfer.adapters.db import BigId, Cents, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_users"),
    )
    op.create_table(
        "cards",
        sa.Column("number", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("holder", sa.String(200)),
        sa.Column("phone", sa.String(10)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("number", name="pk_cards"),
    )
    op.create_index("ix_cards_phone", "cards", ["phone"])
    op.create_table(
        "operations",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("card_number", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("kkm", sa.String(64)),
        sa.Column("store", sa.String(64)),
        sa.Column("receipt_number", sa.String(64)),
        sa.Column("operation_time", UTCDateTime(), nullable=False),
        sa.Column("business_date", sa.Date(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("receipt_sum", Cents(), nullable=False),
        sa.Column("bonus_accrued", Cents(), nullable=False),
        sa.Column("bonus_spent", Cents(), nullable=False),
        sa.Column("accumulation_delta", Cents(), nullable=False),
        sa.Column("receipt_count_delta", sa.Integer(), nullable=False),
        sa.Column("promotion_code", sa.String(64)),
        sa.Column("original_operation_id", sa.String(36)),
        sa.Column("note", sa.String(500)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_operations"),
        sa.ForeignKeyConstraint(["card_number"], ["cards.number"], name="fk_operations_card_number_cards"),
    )
    op.create_index("ix_operations_card_time", "operations", ["card_number", "operation_time"])
    op.create_index("ix_operations_original_operation_id", "operations", ["original_operation_id"])
    op.create_table(
        "lots",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("card_number", sa.String(32), nullable=False),
        sa.Column("measure", sa.String(16), nullable=False),
        sa.Column("remaining", Cents(), nullable=False),
        sa.Column("available_from", UTCDateTime()),
        sa.Column("expires_at", UTCDateTime()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_lots"),
        sa.ForeignKeyConstraint(["card_number"], ["cards.number"], name="fk_lots_card_number_cards"),
    )
    op.create_index("ix_lots_card_measure", "lots", ["card_number", "measure"])
    op.create_table(
        "entries",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("operation_id", sa.String(36), nullable=False),
        sa.Column("lot_id", sa.BigInteger(), nullable=False),
        sa.Column("card_number", sa.String(32), nullable=False),
        sa.Column("measure", sa.String(16), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("amount", Cents(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_entries"),
        sa.ForeignKeyConstraint(["operation_id"], ["operations.id"], name="fk_entries_operation_id_operations"),
        sa.ForeignKeyConstraint(["lot_id"], ["lots.id"], name="fk_entries_lot_id_lots"),
    )
    op.create_index("ix_entries_operation_id", "entries", ["operation_id"])
    op.create_index("ix_entries_lot_id", "entries", ["lot_id"])


def downgrade() -> None:
    for table in ("entries", "lots", "operations", "cards", "users"):
        op.drop_table(table)
