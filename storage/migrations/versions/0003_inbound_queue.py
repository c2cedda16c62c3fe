"""The inbound queue: webhooks store what they accept, the worker processes it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (the column types below)
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the inboundqueue table."""
    op.create_table(
        "inboundqueue",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("external_id", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
        sa.Column("chat_key", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("available_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("channel", "external_id", name="uq_inboundqueue_external"),
    )
    with op.batch_alter_table("inboundqueue", schema=None) as batch_op:
        batch_op.create_index("ix_inboundqueue_chat", ["chat_key", "id"], unique=False)


def downgrade() -> None:
    """Drop the inboundqueue table."""
    with op.batch_alter_table("inboundqueue", schema=None) as batch_op:
        batch_op.drop_index("ix_inboundqueue_chat")
    op.drop_table("inboundqueue")
