"""The embedded limiter's durable state in the ledger: its log and snapshot, an index to find a
reservation's call, and (SQLite) the counts of the SQL limits store carried over into it.

A deployment whose limits lived in the ledger's SQLite file (`limits.backend` equal to
`ledger.url`) keeps every quota, budget, rate window and live slot: the old tables
(limit_counters, limit_slots, limit_reservations) become the first snapshot. They are left in
place, unused, so a downgrade finds them as they were.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer, "sqlite")
log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    # The limiter creates these itself in a ledger not yet at this revision.
    if not inspector.has_table("limit_log"):
        op.create_table(
            "limit_log",
            sa.Column("namespace", sa.String(128), nullable=False),
            sa.Column("seq", BIGINT, nullable=False, autoincrement=False),
            sa.Column("writer", sa.String(32), nullable=False, comment="the process that wrote it"),
            sa.Column("entry", sa.Text, nullable=False, comment="one operation, as JSON"),
            sa.PrimaryKeyConstraint("namespace", "seq", name="pk_limit_log"),
        )
    if not inspector.has_table("limit_state"):
        op.create_table(
            "limit_state",
            sa.Column("namespace", sa.String(128), nullable=False),
            sa.Column(
                "seq",
                BIGINT,
                nullable=False,
                comment="the last log entry the snapshot includes",
            ),
            sa.Column(
                "state", sa.Text, nullable=False, comment="counters, slots, open reservations"
            ),
            sa.Column("written_at", sa.Float, nullable=False),
            sa.PrimaryKeyConstraint("namespace", name="pk_limit_state"),
        )
    op.create_index("ix_calls_reservation_id", "calls", ["reservation_id"])
    if bind.dialect.name == "sqlite" and inspector.has_table("limit_reservations"):
        _carry_over(bind, inspector)


def _carry_over(bind: sa.Connection, inspector: sa.Inspector) -> None:
    from vapi_proxy.limits.embedded import check_legacy, legacy_states, write_snapshot
    from vapi_proxy.limits.sql import LimitsSchemaError

    try:
        check_legacy(inspector)
    except LimitsSchemaError as exc:
        log.warning("limits counts not carried over: %s", exc)
        return
    have = {ns for (ns,) in bind.execute(sa.text("SELECT namespace FROM limit_state"))}
    for namespace, state in legacy_states(bind).items():
        if namespace not in have:
            write_snapshot(bind, namespace, state, time.time())


def downgrade() -> None:
    op.drop_index("ix_calls_reservation_id", table_name="calls")
    op.drop_table("limit_state")
    op.drop_table("limit_log")
