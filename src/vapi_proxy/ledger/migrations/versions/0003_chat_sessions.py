"""Chats remember their Vapi session, so only the identity that started a session continues it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(
            sa.Column("session_id", sa.String(128), comment="Vapi chat session id (chats only)")
        )
    op.create_index("ix_calls_session_id", "calls", ["session_id"])


def downgrade() -> None:
    op.drop_index("ix_calls_session_id", table_name="calls")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("session_id")
