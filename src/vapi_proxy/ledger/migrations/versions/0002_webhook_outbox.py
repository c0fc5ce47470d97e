"""Webhook outbox: verified events waiting to be forwarded to the app's URLs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "event_id", sa.String(64), nullable=False, comment="sent as X-Vapi-Proxy-Event-Id"
        ),
        sa.Column("target", sa.String(2048), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False, comment="the delivery's raw bytes"),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, comment="pending, delivered or parked"),
        sa.Column("last_error", sa.String(512)),
        sa.Column("delivered_at", TS),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_outbox"),
    )
    op.create_index(
        "ix_webhook_outbox_state_next_attempt_at", "webhook_outbox", ["state", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_table("webhook_outbox")
