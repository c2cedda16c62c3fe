"""Outbox indexes: a member's rows by status (the held-message probe on every inbound
message) and the sender's claim order (status, priority, due time, id).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Index by member and status instead of member alone; index the claim order."""
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_member_status", ["member_id", "status"], unique=False)
        batch_op.drop_index("ix_outbox_member_id")
        batch_op.create_index("ix_outbox_claim", ["status", "priority", "next_attempt_at", "id"],
                              unique=False)


def downgrade() -> None:
    """Restore the member index; drop the claim index."""
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_claim")
        batch_op.create_index("ix_outbox_member_id", ["member_id"], unique=False)
        batch_op.drop_index("ix_outbox_member_status")
