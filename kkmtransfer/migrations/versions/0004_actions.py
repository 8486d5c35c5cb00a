"""Back-office actions (bonus credit, zeroing) and the lots one operation made.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

from kkmtransfer.adapters.db import Cents, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lots") as batch:
        batch.add_column(sa.Column("origin_operation_id", sa.String(36)))
        batch.add_column(sa.Column("exclusive", sa.Boolean(), nullable=False, server_default=sa.text("false")))
    op.create_table(
        "actions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", Cents()),
        sa.Column("until_date", sa.Date()),
        sa.Column("inactive_since", sa.Date()),
        sa.Column("selection", sa.String(500), nullable=False),
        sa.Column("note", sa.String(500)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("cards", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime()),
        sa.Column("cancelled_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_actions"),
    )
    op.create_table(
        "action_cards",
        sa.Column("action_id", sa.String(36), nullable=False),
        sa.Column("card_number", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("amount", Cents()),
        sa.Column("kept", Cents()),
        sa.PrimaryKeyConstraint("action_id", "card_number", name="pk_action_cards"),
        sa.ForeignKeyConstraint(["action_id"], ["actions.id"], name="fk_action_cards_action_id_actions"),
    )


def downgrade() -> None:
    op.drop_table("action_cards")
    op.drop_table("actions")
    with op.batch_alter_table("lots") as batch:
        batch.drop_column("exclusive")
        batch.drop_column("origin_operation_id")
