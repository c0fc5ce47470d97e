"""The ledger's tables as SQLAlchemy Core metadata: calls, the events that changed them,
hourly usage totals, idempotency keys, the outbox of webhook events to forward, webhook intake
counters per 5 minutes, and the operator console's sessions, audit trail and identity blocks.
Migrations in `migrations/versions/` must produce exactly this."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which stores naive text) as on PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("ledger timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        if not isinstance(moment, datetime):
            raise TypeError(f"not a timestamp: {value!r}")
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True, comment="Vapi call or chat id"),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("identity_key", sa.String(512), nullable=False),
    sa.Column("identity_hash", sa.String(32), nullable=False),
    sa.Column("auth_method", sa.String(32), nullable=False),
    sa.Column("tenant", sa.String(256)),
    sa.Column("profile", sa.String(256), nullable=False),
    sa.Column("request_id", sa.String(128)),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("started_at", UTCDateTime()),
    sa.Column("ended_at", UTCDateTime()),
    sa.Column("ended_reason", sa.String(256)),
    sa.Column("duration_seconds", sa.Float),
    sa.Column("cost_usd", sa.Float),
    sa.Column("max_duration_seconds", sa.Float),
    sa.Column("reservation_id", sa.String(64)),
    sa.Column("summary", sa.Text),
    sa.Column("analysis", JSONType),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("session_id", sa.String(128), comment="Vapi chat session id (chats only)"),
    sa.Column(
        "control_url",
        sa.String(2048),
        comment="Vapi's monitor.controlUrl: server-side only, never shown to a client",
    ),
    sa.Index(None, "identity_key", "created_at"),
    sa.Index(None, "session_id"),
    sa.Index(None, "tenant", "created_at"),
    # Covers the console's usage queries (a time range, grouped by bucket, profile or identity)
    # so they read only the index; it supersedes the plain created_at index of 0001.
    sa.Index(
        "ix_calls_created_at_usage",
        "created_at",
        "kind",
        "profile",
        "tenant",
        "identity_key",
        "duration_seconds",
        "cost_usd",
    ),
    sa.Index(None, "status", "created_at"),
    # The embedded limiter finds the calls of its open reservations at start (limits/embedded).
    sa.Index(None, "reservation_id"),
)

# Hourly usage totals for the console's queries (console/queries.py), kept by triggers on
# `calls` that migration 0007 creates: every insert, settle or correction of a call moves its
# share in the same transaction. `tenant` is '' for calls without one (it is part of the key).
usage_hourly = sa.Table(
    "usage_hourly",
    metadata,
    sa.Column("hour", sa.String(13), primary_key=True, comment="UTC 'YYYY-MM-DD HH'"),
    sa.Column("identity_key", sa.String(512), primary_key=True),
    sa.Column("profile", sa.String(256), primary_key=True),
    sa.Column("tenant", sa.String(256), primary_key=True, comment="'' for no tenant"),
    sa.Column("calls", sa.Integer, nullable=False, comment="calls other than chats"),
    sa.Column("chats", sa.Integer, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sqlite_with_rowid=False,
)

call_events = sa.Table(
    "call_events",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("call_id", sa.String(128), comment="as reported; may name a call we never made"),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32)),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("dedupe_key", sa.String(256), nullable=False, unique=True),
    sa.Column("known", sa.Boolean, nullable=False),
    sa.Column("payload", JSONType),
    sa.Index(None, "call_id"),
    sa.Index(None, "received_at"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("key", sa.String(256), primary_key=True),
    sa.Column("identity_key", sa.String(512), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("request_hash", sa.String(64)),
    sa.Column("response_status", sa.Integer),
    sa.Column("response_body", sa.LargeBinary),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Index(None, "expires_at"),
)

webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("event_id", sa.String(64), nullable=False, comment="sent as X-Vapi-Proxy-Event-Id"),
    sa.Column("target", sa.String(2048), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False, comment="the delivery's raw bytes"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, comment="pending, delivered or parked"),
    sa.Column("last_error", sa.String(512)),
    sa.Column("delivered_at", UTCDateTime()),
    sa.Index(None, "state", "next_attempt_at"),
)

# Webhook intake counters (received, verified, refused by reason, duplicates) per 5-minute UTC
# bucket and per process, for the console (webhooks/stats.py): each process adds what it counted
# every few seconds, one upsert for all of it, never a write per delivery. `reason` is '' except
# for `rejected`. Rows older than the console's longest window (31 days) are deleted.
webhook_tallies = sa.Table(
    "webhook_tallies",
    metadata,
    sa.Column("bucket", UTCDateTime(), primary_key=True, comment="start of the 5-minute bucket"),
    sa.Column("process", sa.String(64), primary_key=True, comment="host/pid/random of a worker"),
    sa.Column("counter", sa.String(16), primary_key=True),
    sa.Column("reason", sa.String(64), primary_key=True, comment="'' unless counter = rejected"),
    sa.Column("count", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
    sqlite_with_rowid=False,
)

admin_sessions = sa.Table(
    "admin_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True, comment="sha256 of the cookie"),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("client", sa.String(64)),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Index(None, "expires_at"),
)

admin_audit = sa.Table(
    "admin_audit",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(512)),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("client", sa.String(64)),
    sa.Column("request_id", sa.String(128)),
    sa.Column("detail", JSONType),
    sa.Index(None, "at"),
    sa.Index(None, "actor", "at"),
    sa.Index(None, "client", "at"),
)

identity_blocks = sa.Table(
    "identity_blocks",
    metadata,
    sa.Column("identity_key", sa.String(512), primary_key=True),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime()),
    sa.Column("created_by", sa.String(128), nullable=False),
)

console_versions = sa.Table(
    "console_versions",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
)

# The embedded limiter's durable state (limits/embedded.py): an append-only log of what each
# reservation took and gave back, and a periodic snapshot of the counters it adds up to.
limit_log = sa.Table(
    "limit_log",
    metadata,
    sa.Column("namespace", sa.String(128), primary_key=True),
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("writer", sa.String(32), nullable=False, comment="the process that wrote it"),
    sa.Column("entry", sa.Text, nullable=False, comment="one operation, as JSON"),
)

limit_state = sa.Table(
    "limit_state",
    metadata,
    sa.Column("namespace", sa.String(128), primary_key=True),
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        nullable=False,
        comment="the last log entry the snapshot includes",
    ),
    sa.Column("state", sa.Text, nullable=False, comment="counters, slots, open reservations"),
    sa.Column("written_at", sa.Float, nullable=False),
)
