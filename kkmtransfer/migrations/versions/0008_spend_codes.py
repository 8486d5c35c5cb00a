"""SMS codes before spending bonuses: the card's flag, the codes (hashed) and their audit.

Revision ID: 0008
Revises: 0006
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

from kkmtransfer.adapters.db import BigId, UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cards") as batch:
        batch.add_column(sa.Column("spend_code_required", sa.Boolean(), nullable=False,
                                   server_default=sa.text("false")))
    op.create_table(
        "spend_codes",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("card_number", sa.String(32), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("kkm", sa.String(64)),
        sa.Column("requested_by", sa.String(64)),
        sa.Column("message_id", sa.String(64)),
        sa.Column("used_operation_id", sa.String(36)),
        sa.Column("closed_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_spend_codes"),
        sa.ForeignKeyConstraint(["card_number"], ["cards.number"], name="fk_spend_codes_card_number_cards"),
    )
    op.create_index("ix_spend_codes_card", "spend_codes", ["card_number", "id"])
    op.create_table(
        "spend_code_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("card_number", sa.String(32), nullable=False),
        sa.Column("code_id", sa.BigInteger()),
        sa.Column("who", sa.String(64)),
        sa.Column("kkm", sa.String(64)),
        sa.Column("operation_id", sa.String(36)),
        sa.Column("detail", sa.String(500)),
        sa.PrimaryKeyConstraint("id", name="pk_spend_code_events"),
    )
    op.create_index("ix_spend_code_events_at", "spend_code_events", ["at"])
    op.create_index("ix_spend_code_events_card", "spend_code_events", ["card_number", "at"])


def downgrade() -> None:
    op.drop_index("ix_spend_code_events_card", table_name="spend_code_events")
    op.drop_index("ix_spend_code_events_at", table_name="spend_code_events")
    op.drop_table("spend_code_events")
    op.drop_index("ix_spend_codes_card", table_name="spend_codes")
    op.drop_table("spend_codes")
    with op.batch_alter_table("cards") as batch:
        batch.drop_column("spend_code_required")
