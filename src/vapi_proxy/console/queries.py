"""The console's usage queries over the ledger: totals per hour or day, per profile and per
identity, within a time range and filters.

The whole UTC hours of a range are read from `usage_hourly` (hourly totals per identity,
profile and tenant that triggers keep in step with `calls`, migration 0007), so the time no
longer grows with the calls in the range; only the partial hours at its two ends are summed from
the calls themselves (the covering usage index). Both parts are grouped by the database and
added up here; the buckets are cut by the database (text prefixes of the hour, PostgreSQL
`date_trunc` in UTC for the raw calls)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa

from vapi_proxy.auth.identity import parse_identity_key
from vapi_proxy.ledger.engine import Database
from vapi_proxy.ledger.schema import call_events, calls, usage_hourly, webhook_outbox

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

    def where(self, query: Any, start: datetime | None = None, end: datetime | None = None) -> Any:
        """The filters on raw calls, created in [start, end) (default: the whole range)."""
        start = self.since if start is None else start
        end = self.until if end is None else end
        query = query.where(calls.c.created_at >= start, calls.c.created_at < end)
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


def _rollup_measures() -> list[Any]:
    u = usage_hourly.c
    return [
        sa.func.sum(u.calls).label("calls"),
        sa.func.sum(u.chats).label("chats"),
        sa.func.sum(u.seconds).label("seconds"),
        sa.func.sum(u.cost_usd).label("cost"),
    ]


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


def _hour_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H")


Dim = Literal["bucket", "profile", "identity"]


@dataclass(slots=True)
class _Sums:
    calls: int = 0
    chats: int = 0
    seconds: float = 0.0
    cost: float = 0.0
    tenant: str | None = None

    def add(self, row: Any) -> None:
        self.calls += int(row.calls or 0)
        self.chats += int(row.chats or 0)
        self.seconds += float(row.seconds or 0.0)
        self.cost += float(row.cost or 0.0)


def _split(flt: UsageFilter) -> tuple[list[tuple[datetime, datetime]], tuple[str, str] | None]:
    """The range's partial hours at either end (read from the calls) and its whole hours (read
    from the hourly totals, as 'YYYY-MM-DD HH' bounds), or the whole range as calls when it
    holds no whole hour."""
    since, until = flt.since.astimezone(UTC), flt.until.astimezone(UTC)
    first = floor(since, "hour")
    if first < since:
        first += timedelta(hours=1)
    last = floor(until, "hour")
    if first >= last:
        return ([(since, until)] if since < until else []), None
    edges = [(a, b) for a, b in ((since, first), (last, until)) if a < b]
    return edges, (_hour_text(first), _hour_text(last))


def _raw_query(db: Database, flt: UsageFilter, dims: tuple[Dim, ...], span: Any) -> Any:
    # The identity is grouped by an expression rather than the bare column: otherwise SQLite
    # walks the whole (identity_key, created_at) index to skip a sort instead of scanning just
    # the time range of the usage index.
    who = calls.c.identity_key.concat("")
    columns: dict[Dim, Any] = {
        "bucket": _bucket_expr(db, flt.bucket).label("bucket"),
        "profile": calls.c.profile.label("profile"),
        "identity": who.label("identity_key"),
    }
    keys = [columns[d] for d in dims]
    extra = [sa.func.max(calls.c.tenant).label("tenant")] if "identity" in dims else []
    query = flt.where(sa.select(*keys, *extra, *_measures()).select_from(calls), *span)
    return query.group_by(*keys) if keys else query


def _rollup_query(flt: UsageFilter, dims: tuple[Dim, ...], hours: tuple[str, str]) -> Any:
    u = usage_hourly.c
    columns: dict[Dim, Any] = {
        "bucket": sa.func.substr(u.hour, 1, 13 if flt.bucket == "hour" else 10).label("bucket"),
        "profile": u.profile.label("profile"),
        "identity": u.identity_key.label("identity_key"),
    }
    keys = [columns[d] for d in dims]
    extra = [sa.func.max(u.tenant).label("tenant")] if "identity" in dims else []
    query = sa.select(*keys, *extra, *_rollup_measures()).where(
        u.hour >= hours[0], u.hour < hours[1]
    )
    if flt.profile is not None:
        query = query.where(u.profile == flt.profile)
    if flt.tenant is not None:
        query = query.where(u.tenant == flt.tenant)
    if flt.identity is not None:
        query = query.where(u.identity_key == flt.identity)
    return query.group_by(*keys) if keys else query


async def _grouped(
    db: Database, flt: UsageFilter, dims: tuple[Dim, ...]
) -> dict[tuple[Any, ...], _Sums]:
    """Totals per combination of `dims` over the range: the hourly totals for its whole hours
    plus the calls of its partial hours, added up. Groups without a call are left out (as a
    grouped query over the calls would)."""
    edges, hours = _split(flt)
    queries = [_raw_query(db, flt, dims, span) for span in edges]
    if hours is not None:
        queries.append(_rollup_query(flt, dims, hours))
    found: dict[tuple[Any, ...], _Sums] = {}
    async with db.read() as conn:
        for query in queries:
            for row in await conn.execute(query):
                key = tuple(
                    _bucket_start(row.bucket, flt.bucket)
                    if d == "bucket"
                    else getattr(row, "identity_key" if d == "identity" else d)
                    for d in dims
                )
                sums = found.setdefault(key, _Sums())
                sums.add(row)
                if "identity" in dims and row.tenant:  # '' is the hourly table's "none"
                    sums.tenant = (
                        row.tenant if sums.tenant is None else max(sums.tenant, row.tenant)
                    )
    if not dims and not found:
        found[()] = _Sums()
    return {k: v for k, v in found.items() if v.calls or v.chats or not dims}


def _totals(row: Any) -> dict[str, Any]:
    return {
        "calls": int(row.calls),
        "chats": int(row.chats),
        "minutes": round(float(row.seconds) / 60, 2) + 0.0,  # + 0.0: never "-0.0"
        "costUsd": round(float(row.cost), 4) + 0.0,
    }


def _rank(sums: _Sums) -> tuple[float, float, int]:
    return (-sums.cost, -sums.seconds, -sums.calls)


async def usage_series(db: Database, flt: UsageFilter) -> list[dict[str, Any]]:
    """One point per bucket from `since` to `until`, empty buckets included."""
    found = {key[0]: _totals(s) for key, s in (await _grouped(db, flt, ("bucket",))).items()}
    return _fill(flt, found)


async def by_profile(db: Database, flt: UsageFilter) -> list[dict[str, Any]]:
    groups = await _grouped(db, flt, ("profile",))
    items = [{"profile": key[0], **_totals(s)} for key, s in groups.items()]
    return sorted(items, key=lambda i: (-i["costUsd"], -i["minutes"], -i["calls"], i["profile"]))


async def top_identities(db: Database, flt: UsageFilter, *, limit: int) -> list[dict[str, Any]]:
    """The identities with the most cost (then minutes, then calls) in the range."""
    groups = await _grouped(db, flt, ("identity",))
    ranked = sorted(groups.items(), key=lambda kv: (*_rank(kv[1]), kv[0][0]))[:limit]
    return [_user(key[0], sums) for key, sums in ranked]


def _user(name: str, sums: _Sums) -> dict[str, Any]:
    return {
        "identity": name,
        "method": parse_identity_key(name)[0],
        "tenant": sums.tenant,
        **_totals(sums),
    }


async def totals(db: Database, flt: UsageFilter) -> dict[str, Any]:
    return _totals((await _grouped(db, flt, ())).get((), _Sums()))


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
    """Totals, the series, the per-profile breakdown and the top identities from two groupings
    (run side by side) instead of four: one by bucket, one by identity and profile; totals and
    the profile table are summed from those here."""
    by_bucket, by_who = await asyncio.gather(
        _grouped(db, flt, ("bucket",)), _grouped(db, flt, ("identity", "profile"))
    )
    total = _Sums()
    found: dict[datetime, dict[str, Any]] = {}
    for key, sums in by_bucket.items():
        total.add(sums)
        found[key[0]] = _totals(sums)
    profiles: dict[str, _Sums] = {}
    users: dict[str, _Sums] = {}
    for (name, profile), sums in by_who.items():
        profiles.setdefault(profile, _Sums()).add(sums)
        user = users.setdefault(name, _Sums())
        user.add(sums)
        if sums.tenant is not None:
            user.tenant = sums.tenant if user.tenant is None else max(user.tenant, sums.tenant)
    profile_items = sorted(
        ({"profile": name, **_totals(s)} for name, s in profiles.items()),
        key=lambda i: (-i["costUsd"], -i["minutes"], -i["calls"], i["profile"]),
    )
    ranked = sorted(users.items(), key=lambda kv: (*_rank(kv[1]), kv[0]))[:top]
    return {
        "totals": _totals(total),
        "series": _fill(flt, found),
        "profiles": profile_items,
        "topUsers": [_user(name, sums) for name, sums in ranked],
    }


def _fill(flt: UsageFilter, found: dict[datetime, dict[str, Any]]) -> list[dict[str, Any]]:
    empty = {"calls": 0, "chats": 0, "minutes": 0.0, "costUsd": 0.0}
    points = []
    moment = floor(flt.since, flt.bucket)
    while moment < flt.until:
        points.append({"t": _iso(moment), **found.get(moment, empty)})
        moment += BUCKET_SIZES[flt.bucket]
    return points
