"""Gift certificates: their attributes; their money lives in the ledger (lots of the measure certificate).

Revision ID: 0010
Revises: 0006
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

from kkmtransfer.adapters.db import Cents, UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("number", sa.String(27), nullable=False),
        sa.Column("account", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("nominal", Cents(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("blocked", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("block_reason", sa.String(64)),
        sa.Column("valid_days", sa.Integer()),
        sa.Column("valid_until", sa.Date()),
        sa.Column("expires_at", UTCDateTime()),
        sa.Column("pin_hash", sa.String(255)),
        sa.Column("pin_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("sale_operation_id", sa.String(36)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("sold_at", UTCDateTime()),
        sa.ForeignKeyConstraint(["account"], ["cards.number"], name="fk_certificates_account_cards"),
        sa.PrimaryKeyConstraint("number", name="pk_certificates"),
        sa.UniqueConstraint("account", name="uq_certificates_account"),
    )
    op.create_index("ix_certificates_state", "certificates", ["state"])


def downgrade() -> None:
    op.drop_index("ix_certificates_state", table_name="certificates")
    op.drop_table("certificates")
