"""Initial ledger: calls, call_events, idempotency_keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Spelled out rather than imported from schema.py: a revision must keep meaning what it meant
# when it was written, whatever schema.py becomes.
TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(128), nullable=False, comment="Vapi call or chat id"),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("identity_key", sa.String(512), nullable=False),
        sa.Column("identity_hash", sa.String(32), nullable=False),
        sa.Column("auth_method", sa.String(32), nullable=False),
        sa.Column("tenant", sa.String(256)),
        sa.Column("profile", sa.String(256), nullable=False),
        sa.Column("request_id", sa.String(128)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("started_at", TS),
        sa.Column("ended_at", TS),
        sa.Column("ended_reason", sa.String(256)),
        sa.Column("duration_seconds", sa.Float),
        sa.Column("cost_usd", sa.Float),
        sa.Column("max_duration_seconds", sa.Float),
        sa.Column("reservation_id", sa.String(64)),
        sa.Column("summary", sa.Text),
        sa.Column("analysis", JSON),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_calls"),
    )
    op.create_index("ix_calls_identity_key_created_at", "calls", ["identity_key", "created_at"])
    op.create_index("ix_calls_tenant_created_at", "calls", ["tenant", "created_at"])
    op.create_index("ix_calls_created_at", "calls", ["created_at"])

    op.create_table(
        "call_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("call_id", sa.String(128), comment="as reported; may name a call we never made"),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32)),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("dedupe_key", sa.String(256), nullable=False),
        sa.Column("known", sa.Boolean, nullable=False),
        sa.Column("payload", JSON),
        sa.PrimaryKeyConstraint("id", name="pk_call_events"),
        sa.UniqueConstraint("dedupe_key", name="uq_call_events_dedupe_key"),
    )
    op.create_index("ix_call_events_call_id", "call_events", ["call_id"])

    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("identity_key", sa.String(512), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("request_hash", sa.String(64)),
        sa.Column("response_status", sa.Integer),
        sa.Column("response_body", sa.LargeBinary),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("key", "identity_key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("call_events")
    op.drop_table("calls")
