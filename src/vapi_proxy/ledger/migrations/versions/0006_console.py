"""The operator console: admin sessions, the audit trail, identity blocks (and the version
counter replicas poll to see block changes), each call's server-side control URL, and the
indexes the console's queries use.

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIGINT = sa.BigInteger().with_variant(sa.Integer, "sqlite")
JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(
            sa.Column(
                "control_url",
                sa.String(2048),
                comment="Vapi's monitor.controlUrl: server-side only, never shown to a client",
            )
        )
    # The console's usage queries read only this index (a range scan, no table lookups); its
    # first column makes the plain created_at index redundant.
    op.create_index(
        "ix_calls_created_at_usage",
        "calls",
        [
            "created_at",
            "kind",
            "profile",
            "tenant",
            "identity_key",
            "duration_seconds",
            "cost_usd",
        ],
    )
    op.drop_index("ix_calls_created_at", table_name="calls")
    op.create_index("ix_calls_status_created_at", "calls", ["status", "created_at"])
    op.create_index("ix_call_events_received_at", "call_events", ["received_at"])
    op.create_table(
        "admin_sessions",
        sa.Column("token_hash", sa.String(64), nullable=False, comment="sha256 of the cookie"),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("client", sa.String(64)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="pk_admin_sessions"),
    )
    op.create_index("ix_admin_sessions_expires_at", "admin_sessions", ["expires_at"])
    op.create_table(
        "admin_audit",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(512)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("client", sa.String(64)),
        sa.Column("request_id", sa.String(128)),
        sa.Column("detail", JSON),
        sa.PrimaryKeyConstraint("id", name="pk_admin_audit"),
    )
    op.create_index("ix_admin_audit_at", "admin_audit", ["at"])
    op.create_index("ix_admin_audit_actor_at", "admin_audit", ["actor", "at"])
    op.create_index("ix_admin_audit_client_at", "admin_audit", ["client", "at"])
    op.create_table(
        "identity_blocks",
        sa.Column("identity_key", sa.String(512), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("identity_key", name="pk_identity_blocks"),
    )
    op.create_table(
        "console_versions",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_console_versions"),
    )


def downgrade() -> None:
    op.drop_table("console_versions")
    op.drop_table("identity_blocks")
    op.drop_table("admin_audit")
    op.drop_table("admin_sessions")
    op.drop_index("ix_call_events_received_at", table_name="call_events")
    op.drop_index("ix_calls_status_created_at", table_name="calls")
    op.create_index("ix_calls_created_at", "calls", ["created_at"])
    op.drop_index("ix_calls_created_at_usage", table_name="calls")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("control_url")
