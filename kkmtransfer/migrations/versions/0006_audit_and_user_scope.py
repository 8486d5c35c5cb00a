"""The audit trail, the actor of each operation, registers' users bound to KKM codes or a store.

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

from kkmtransfer.adapters.db import BigId, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object", sa.String(255)),
        sa.Column("details", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("actor", sa.String(255)))
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("kkms", sa.String(500)))
        batch.add_column(sa.Column("store", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("store")
        batch.drop_column("kkms")
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("actor")
    op.drop_index("ix_audit_at", table_name="audit")
    op.drop_table("audit")
