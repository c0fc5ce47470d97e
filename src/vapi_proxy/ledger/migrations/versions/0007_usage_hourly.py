"""Hourly usage totals for the console: calls, chats, seconds and cost per UTC hour, identity,
profile and tenant, kept by triggers on `calls` (in the transaction of every insert, settle
or correction: the old row's share is taken out and the new row's put in, so a cost settled
twice counts once), and filled here from the calls already recorded.

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None

KEY = "hour, identity_key, profile, tenant"
MEASURES = "calls, chats, seconds, cost_usd"
ADD = (
    "calls = usage_hourly.calls + excluded.calls, chats = usage_hourly.chats + excluded.chats, "
    "seconds = usage_hourly.seconds + excluded.seconds, "
    "cost_usd = usage_hourly.cost_usd + excluded.cost_usd"
)
# The columns whose change moves a call's share of the totals.
WATCHED = "kind, identity_key, profile, tenant, created_at, duration_seconds, cost_usd"


def _hour(row: str, dialect: str) -> str:
    """A call's UTC hour as 'YYYY-MM-DD HH' text (SQLite stores UTC as ISO text)."""
    if dialect == "postgresql":
        return f"to_char({row}.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24')"
    return f"substr({row}.created_at, 1, 13)"


def _share(row: str, sign: str, dialect: str) -> str:
    """One upsert adding (sign '') or removing (sign '-') the share of OLD or NEW."""
    # Built from this module's constants only: no outside value reaches the SQL.
    return (
        f"INSERT INTO usage_hourly ({KEY}, {MEASURES}) VALUES ("  # noqa: S608
        f"{_hour(row, dialect)}, {row}.identity_key, {row}.profile, coalesce({row}.tenant, ''), "
        f"{sign}(CASE WHEN {row}.kind = 'chat' THEN 0 ELSE 1 END), "
        f"{sign}(CASE WHEN {row}.kind = 'chat' THEN 1 ELSE 0 END), "
        f"{sign}coalesce({row}.duration_seconds, 0.0), {sign}coalesce({row}.cost_usd, 0.0)) "
        f"ON CONFLICT ({KEY}) DO UPDATE SET {ADD}"
    )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "usage_hourly",
        sa.Column("hour", sa.String(13), nullable=False, comment="UTC 'YYYY-MM-DD HH'"),
        sa.Column("identity_key", sa.String(512), nullable=False),
        sa.Column("profile", sa.String(256), nullable=False),
        sa.Column("tenant", sa.String(256), nullable=False, comment="'' for no tenant"),
        sa.Column("calls", sa.Integer, nullable=False, comment="calls other than chats"),
        sa.Column("chats", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint(
            "hour", "identity_key", "profile", "tenant", name="pk_usage_hourly"
        ),
        sqlite_with_rowid=False,
    )
    if dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION usage_hourly_apply() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            "BEGIN\n"
            "  IF TG_OP <> 'INSERT' THEN\n"
            f"    {_share('OLD', '-', dialect)};\n"
            "  END IF;\n"
            "  IF TG_OP <> 'DELETE' THEN\n"
            f"    {_share('NEW', '', dialect)};\n"
            "  END IF;\n"
            "  RETURN NULL;\n"
            "END $$"
        )
        op.execute(
            f"CREATE TRIGGER calls_usage_hourly AFTER INSERT OR DELETE OR UPDATE OF {WATCHED} "
            "ON calls FOR EACH ROW EXECUTE FUNCTION usage_hourly_apply()"
        )
    else:
        new, old = _share("NEW", "", dialect), _share("OLD", "-", dialect)
        op.execute(
            f"CREATE TRIGGER calls_usage_hourly_insert AFTER INSERT ON calls BEGIN {new}; END"
        )
        op.execute(
            f"CREATE TRIGGER calls_usage_hourly_delete AFTER DELETE ON calls BEGIN {old}; END"
        )
        op.execute(
            f"CREATE TRIGGER calls_usage_hourly_update AFTER UPDATE OF {WATCHED} ON calls "
            f"BEGIN {old}; {new}; END"
        )
    hour = _hour("calls", dialect)
    op.execute(  # constants only, no outside value
        f"INSERT INTO usage_hourly ({KEY}, {MEASURES}) "  # noqa: S608
        f"SELECT {hour}, identity_key, profile, coalesce(tenant, ''), "
        "count(CASE WHEN kind <> 'chat' THEN 1 END), count(CASE WHEN kind = 'chat' THEN 1 END), "
        "coalesce(sum(duration_seconds), 0.0), coalesce(sum(cost_usd), 0.0) FROM calls "
        f"GROUP BY {hour}, identity_key, profile, coalesce(tenant, '')"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER calls_usage_hourly ON calls")
        op.execute("DROP FUNCTION usage_hourly_apply()")
    else:
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER calls_usage_hourly_{name}")
    op.drop_table("usage_hourly")
