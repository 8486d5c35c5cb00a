"""Server-derived ids in a key space of their own (server_secret); dismissed journal rejects keep a note.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_secret",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_server_secret"),
    )
    with op.batch_alter_table("journal_rejects") as batch:
        batch.add_column(sa.Column("note", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("journal_rejects") as batch:
        batch.drop_column("note")
    op.drop_table("server_secret")
