"""The console's usage queries over the ledger: totals per hour or day, per profile and per
identity, within a time range and filters. Each is one indexed, grouped query; the buckets are
cut by the database (SQLite text prefixes, PostgreSQL `date_trunc` in UTC)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa

from vapi_proxy.auth.identity import parse_identity_key
from vapi_proxy.ledger.engine import Database
from vapi_proxy.ledger.schema import call_events, calls, webhook_outbox

Bucket = Literal["hour", "day"]
BUCKET_SIZES: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
MAX_BUCKETS = 2000


@dataclass(frozen=True, slots=True)
class UsageFilter:
    since: datetime
    until: datetime
    bucket: Bucket
    profile: str | None = None
    tenant: str | None = None
    identity: str | None = None

    def where(self, query: Any) -> Any:
        query = query.where(calls.c.created_at >= self.since, calls.c.created_at < self.until)
        if self.profile is not None:
            query = query.where(calls.c.profile == self.profile)
        if self.tenant is not None:
            query = query.where(calls.c.tenant == self.tenant)
        if self.identity is not None:
            query = query.where(calls.c.identity_key == self.identity)
        return query

    def view(self) -> dict[str, Any]:
        return {
            "since": _iso(self.since),
            "until": _iso(self.until),
            "bucket": self.bucket,
            "profile": self.profile,
            "tenant": self.tenant,
            "identity": self.identity,
        }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def floor(moment: datetime, bucket: Bucket) -> datetime:
    moment = moment.astimezone(UTC)
    if bucket == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def _measures() -> list[Any]:
    not_chat = calls.c.kind != "chat"
    return [
        sa.func.count(sa.case((not_chat, 1))).label("calls"),
        sa.func.count(sa.case((calls.c.kind == "chat", 1))).label("chats"),
        sa.func.coalesce(sa.func.sum(calls.c.duration_seconds), 0.0).label("seconds"),
        sa.func.coalesce(sa.func.sum(calls.c.cost_usd), 0.0).label("cost"),
    ]


def _totals(row: Any) -> dict[str, Any]:
    return {
        "calls": int(row.calls),
        "chats": int(row.chats),
        "minutes": round(float(row.seconds) / 60, 2),
        "costUsd": round(float(row.cost), 4),
    }


def _bucket_expr(db: Database, bucket: Bucket) -> Any:
    if db.dialect == "postgresql":
        return sa.func.to_char(
            sa.func.date_trunc(bucket, sa.func.timezone("UTC", calls.c.created_at)),
            "YYYY-MM-DD HH24",
        )
    # SQLite keeps UTC timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' text.
    return sa.func.substr(calls.c.created_at, 1, 13 if bucket == "hour" else 10)


def _bucket_start(text: str, bucket: Bucket) -> datetime:
    if bucket == "day":
        return datetime.strptime(text[:10], "%Y-%m-%d").replace(tzinfo=UTC)
    return datetime.strptime(text[:13], "%Y-%m-%d %H").replace(tzinfo=UTC)


async def usage_series(db: Database, flt: UsageFilter) -> list[dict[str, Any]]:
    """One point per bucket from `since` to `until`, empty buckets included."""
    key = _bucket_expr(db, flt.bucket).label("bucket")
    query = flt.where(sa.select(key, *_measures()).select_from(calls)).group_by(key)
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    found = {_bucket_start(row.bucket, flt.bucket): _totals(row) for row in rows}
    empty = {"calls": 0, "chats": 0, "minutes": 0.0, "costUsd": 0.0}
    step = BUCKET_SIZES[flt.bucket]
    points = []
    moment = floor(flt.since, flt.bucket)
    while moment < flt.until:
        points.append({"t": _iso(moment), **found.get(moment, empty)})
        moment += step
    return points


async def by_profile(db: Database, flt: UsageFilter) -> list[dict[str, Any]]:
    query = flt.where(sa.select(calls.c.profile, *_measures()).select_from(calls)).group_by(
        calls.c.profile
    )
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    items = [{"profile": row.profile, **_totals(row)} for row in rows]
    return sorted(items, key=lambda i: (-i["costUsd"], -i["minutes"], -i["calls"], i["profile"]))


async def top_identities(db: Database, flt: UsageFilter, *, limit: int) -> list[dict[str, Any]]:
    """The identities with the most cost (then minutes, then calls) in the range."""
    # Only columns of the usage index (no table lookups), grouped by an expression rather than
    # the bare column: otherwise SQLite walks the whole (identity_key, created_at) index to skip
    # a sort, instead of scanning just the time range.
    who = calls.c.identity_key.concat("")
    query = (
        flt.where(
            sa.select(
                who.label("identity_key"),
                sa.func.max(calls.c.tenant).label("tenant"),
                *_measures(),
            ).select_from(calls)
        )
        .group_by(who)
        .order_by(sa.desc("cost"), sa.desc("seconds"), sa.desc("calls"), who)
        .limit(limit)
    )
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    return [
        {
            "identity": row.identity_key,
            "method": parse_identity_key(row.identity_key)[0],
            "tenant": row.tenant,
            **_totals(row),
        }
        for row in rows
    ]


async def totals(db: Database, flt: UsageFilter) -> dict[str, Any]:
    query = flt.where(sa.select(*_measures()).select_from(calls))
    async with db.read() as conn:
        row = (await conn.execute(query)).one()
    return _totals(row)


async def webhook_health(db: Database, *, since: datetime, now: datetime) -> dict[str, Any]:
    """Webhook events received since `since` by type (and how many named no call we know), and
    the forwarding outbox: rows per state, the oldest item still waiting and its age."""
    by_type = (
        sa.select(
            call_events.c.type,
            sa.func.count().label("n"),
            sa.func.count(sa.case((call_events.c.known.is_(False), 1))).label("unknown"),
            sa.func.max(call_events.c.received_at).label("last"),
        )
        .where(call_events.c.received_at >= since)
        .group_by(call_events.c.type)
    )
    states = sa.select(webhook_outbox.c.state, sa.func.count().label("n")).group_by(
        webhook_outbox.c.state
    )
    oldest = (
        sa.select(
            webhook_outbox.c.id,
            webhook_outbox.c.type,
            webhook_outbox.c.target,
            webhook_outbox.c.created_at,
            webhook_outbox.c.attempts,
            webhook_outbox.c.last_error,
        )
        .where(webhook_outbox.c.state == "pending")
        .order_by(webhook_outbox.c.id)
        .limit(1)
    )
    async with db.read() as conn:
        events = (await conn.execute(by_type)).all()
        counts = {row.state: int(row.n) for row in await conn.execute(states)}
        head = (await conn.execute(oldest)).first()
    oldest_item = None
    if head is not None:
        oldest_item = {
            "id": head.id,
            "type": head.type,
            "target": _origin(head.target),
            "createdAt": _iso(head.created_at),
            "ageSeconds": round(max(0.0, (now - head.created_at).total_seconds()), 1),
            "attempts": head.attempts,
            "lastError": head.last_error,
        }
    return {
        "events": sorted(
            (
                {
                    "type": row.type,
                    "count": int(row.n),
                    "unknownCall": int(row.unknown),
                    "last": _iso(row.last),
                }
                for row in events
            ),
            key=lambda e: (-e["count"], e["type"]),
        ),
        "outbox": {
            "pending": counts.get("pending", 0),
            "parked": counts.get("parked", 0),
            "delivered": counts.get("delivered", 0),
            "oldestPending": oldest_item,
        },
    }


def _origin(url: str) -> str:
    """Scheme, host and path of a forwarding target; never a query string (it may hold a token)."""
    return url.split("?", 1)[0][:300]


async def overview(db: Database, flt: UsageFilter, *, top: int) -> dict[str, Any]:
    """Totals, the series, the per-profile breakdown and the top identities in two scans of the
    usage index (run side by side) instead of four: one grouped by bucket, one by identity and
    profile; totals and the profile table are summed from those here."""
    key = _bucket_expr(db, flt.bucket).label("bucket")
    by_bucket = flt.where(sa.select(key, *_measures()).select_from(calls)).group_by(key)
    who = calls.c.identity_key.concat("")  # see top_identities: keep SQLite on the range scan
    by_who = flt.where(
        sa.select(
            who.label("identity_key"),
            calls.c.profile,
            sa.func.max(calls.c.tenant).label("tenant"),
            *_measures(),
        ).select_from(calls)
    ).group_by(who, calls.c.profile)

    async def rows(query: Any) -> list[Any]:
        async with db.read() as conn:
            return list((await conn.execute(query)).all())

    bucket_rows, who_rows = await asyncio.gather(rows(by_bucket), rows(by_who))
    zero = {"calls": 0, "chats": 0, "seconds": 0.0, "cost": 0.0}

    def add(into: dict[str, Any], row: Any) -> None:
        into["calls"] += int(row.calls)
        into["chats"] += int(row.chats)
        into["seconds"] += float(row.seconds)
        into["cost"] += float(row.cost)

    def view(sums: dict[str, Any]) -> dict[str, Any]:
        return _totals(_Sums(sums["calls"], sums["chats"], sums["seconds"], sums["cost"]))

    total = dict(zero)
    found: dict[datetime, dict[str, Any]] = {}
    for row in bucket_rows:
        add(total, row)
        found[_bucket_start(row.bucket, flt.bucket)] = _totals(row)
    profiles: dict[str, dict[str, Any]] = {}
    users: dict[str, dict[str, Any]] = {}
    tenants: dict[str, str | None] = {}
    for row in who_rows:
        add(profiles.setdefault(row.profile, dict(zero)), row)
        add(users.setdefault(row.identity_key, dict(zero)), row)
        tenants[row.identity_key] = tenants.get(row.identity_key) or row.tenant
    profile_items = sorted(
        ({"profile": name, **view(s)} for name, s in profiles.items()),
        key=lambda i: (-i["costUsd"], -i["minutes"], -i["calls"], i["profile"]),
    )
    ranked = sorted(
        users.items(), key=lambda kv: (-kv[1]["cost"], -kv[1]["seconds"], -kv[1]["calls"], kv[0])
    )[:top]
    top_items = [
        {
            "identity": name,
            "method": parse_identity_key(name)[0],
            "tenant": tenants.get(name),
            **view(sums),
        }
        for name, sums in ranked
    ]
    return {
        "totals": view(total),
        "series": _fill(flt, found),
        "profiles": profile_items,
        "topUsers": top_items,
    }


@dataclass(frozen=True, slots=True)
class _Sums:
    calls: int
    chats: int
    seconds: float
    cost: float


def _fill(flt: UsageFilter, found: dict[datetime, dict[str, Any]]) -> list[dict[str, Any]]:
    empty = {"calls": 0, "chats": 0, "minutes": 0.0, "costUsd": 0.0}
    points = []
    moment = floor(flt.since, flt.bucket)
    while moment < flt.until:
        points.append({"t": _iso(moment), **found.get(moment, empty)})
        moment += BUCKET_SIZES[flt.bucket]
    return points
