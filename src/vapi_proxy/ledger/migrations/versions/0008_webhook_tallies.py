"""Webhook intake counters for the console, per 5-minute UTC bucket and per process: deliveries
received, verified, refused (by reason) and duplicates, added every few seconds by each worker
and summed over the console's window across workers and replicas.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIGINT = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "webhook_tallies",
        sa.Column("bucket", TS, nullable=False, comment="start of the 5-minute bucket"),
        sa.Column("process", sa.String(64), nullable=False, comment="host/pid/random of a worker"),
        sa.Column("counter", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False, comment="'' unless counter = rejected"),
        sa.Column("count", BIGINT, nullable=False),
        sa.PrimaryKeyConstraint(
            "bucket", "process", "counter", "reason", name="pk_webhook_tallies"
        ),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("webhook_tallies")
