"""The hourly usage totals (migration 0007) agree with the calls they sum, on SQLite and
PostgreSQL: random call sets written through the ledger's own paths (the batched call writer,
retries, status updates, end-of-call reports that correct cost and duration, duplicate and late
webhooks, adopted calls), then every console answer over random ranges (partial hours at both
ends, ranges inside one hour, whole days) compared with the same aggregate computed from the
raw call rows. Costs are multiples of 1/64 and durations whole seconds, so every sum is exact
in binary floating point and the answers must be equal, not merely close."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from vapi_proxy.auth.identity import Identity, parse_identity_key
from vapi_proxy.console.queries import (
    BUCKET_SIZES,
    Bucket,
    UsageFilter,
    by_profile,
    floor,
    overview,
    top_identities,
    totals,
    usage_series,
)
from vapi_proxy.ledger.engine import Database
from vapi_proxy.ledger.migrate import upgrade_async
from vapi_proxy.ledger.records import LedgerEvent
from vapi_proxy.ledger.schema import calls, usage_hourly
from vapi_proxy.ledger.store import Ledger

BASE = datetime(2026, 11, 3, tzinfo=UTC)
SPAN = 3 * 86400
PROFILES = ["support", "sales", "ops"]
TENANTS = [None, "acme", "globex"]
KINDS = ["web", "phone", "chat"]


def _moment(rng: random.Random) -> datetime:
    return BASE + timedelta(seconds=rng.randrange(SPAN))


def _event(rng: random.Random, call_id: str, key: str) -> LedgerEvent:
    final = rng.random() < 0.5
    started = _moment(rng) if rng.random() < 0.6 else None
    ended = started + timedelta(seconds=rng.randrange(1800)) if started and final else None
    return LedgerEvent(
        type="end-of-call-report" if final else "status-update",
        call_id=call_id,
        dedupe_key=key,
        status="ended" if final else rng.choice(["ringing", "in-progress", "ended"]),
        started_at=started,
        ended_at=ended,
        duration_seconds=rng.choice([None, float(rng.randrange(3600))]),
        cost_usd=rng.choice([None, rng.randrange(4000) / 64]),
    )


async def _write_random_calls(ledger: Ledger, rng: random.Random, tag: str) -> None:
    ids: list[str] = []

    async def record(call_id: str) -> bool:
        who = rng.randrange(5)
        identity = Identity(f"user{who}", "api_key", tenant=rng.choice(TENANTS))
        return await ledger.record_call(
            call_id=call_id,
            identity=identity,
            profile=rng.choice(PROFILES),
            kind=rng.choice(KINDS),
            created_at=_moment(rng),
        )

    # Side by side, so the call writer batches several rows into one transaction.
    recorded = await asyncio.gather(*(record(f"{tag}-c{i}") for i in range(40)))
    assert all(recorded)
    ids = [f"{tag}-c{i}" for i in range(40)]
    assert not await record(ids[0])  # a retry changes nothing
    # Webhooks that beat their call's row: stored unknown, the call recorded afterwards.
    for i in range(3):
        await ledger.apply_events([(_event(rng, f"{tag}-late{i}", f"{tag}-late{i}-e"), ())])
        assert await record(f"{tag}-late{i}")
        ids.append(f"{tag}-late{i}")
    keys: list[str] = []
    for step in range(120):
        call_id = rng.choice(ids)
        # Now and then a duplicate delivery of an earlier event (same dedupe key).
        key = rng.choice(keys) if keys and rng.random() < 0.1 else f"{tag}-e{step}"
        keys.append(key)
        # One event alone, or a batch of several (one transaction, the same call maybe twice).
        batch = [(_event(rng, call_id, key), ())]
        batch += [
            (_event(rng, rng.choice(ids), f"{key}-b{j}"), ()) for j in range(rng.randrange(4))
        ]
        await ledger.apply_events(batch)
    # Calls known only from their webhooks, adopted later (their events replayed).
    for i in range(2):
        call_id = f"{tag}-adopt{i}"
        await ledger.apply_events([(_event(rng, call_id, f"{call_id}-e{n}"), ()) for n in range(2)])
        adopted = await ledger.adopt_call(
            call_id=call_id,
            identity_hash=f"{i:032x}",
            profile=rng.choice(PROFILES),
            kind="web",
            created_at=_moment(rng),
        )
        assert adopted is not None


async def _rows(db: Database) -> list[Any]:
    async with db.read() as conn:
        return list(await conn.execute(sa.select(calls)))


def _hourly_from_calls(rows: Iterable[Any]) -> dict[tuple[str, ...], tuple[int, int, float, float]]:
    found: dict[tuple[str, ...], list[Any]] = {}
    for r in rows:
        key = (r.created_at.strftime("%Y-%m-%d %H"), r.identity_key, r.profile, r.tenant or "")
        sums = found.setdefault(key, [0, 0, 0.0, 0.0])
        sums[0 if r.kind != "chat" else 1] += 1
        sums[2] += r.duration_seconds or 0.0
        sums[3] += r.cost_usd or 0.0
    return {k: (v[0], v[1], v[2], v[3]) for k, v in found.items()}


async def _hourly_table(db: Database) -> dict[tuple[str, ...], tuple[int, int, float, float]]:
    async with db.read() as conn:
        rows = await conn.execute(sa.select(usage_hourly))
        return {
            (r.hour, r.identity_key, r.profile, r.tenant): (
                r.calls,
                r.chats,
                float(r.seconds),
                float(r.cost_usd),
            )
            for r in rows
        }


def _view(sel: list[Any]) -> dict[str, Any]:
    seconds = sum(r.duration_seconds or 0.0 for r in sel)
    cost = sum(r.cost_usd or 0.0 for r in sel)
    return {
        "calls": sum(1 for r in sel if r.kind != "chat"),
        "chats": sum(1 for r in sel if r.kind == "chat"),
        "minutes": round(seconds / 60, 2),
        "costUsd": round(cost, 4),
    }


def _expected(rows: list[Any], flt: UsageFilter, top: int) -> dict[str, Any]:
    """The console's overview computed from the raw rows, as the grouped queries over the calls
    would answer it."""

    def keep(r: Any) -> bool:
        return (
            flt.since <= r.created_at < flt.until
            and flt.profile in (None, r.profile)
            and flt.tenant in (None, r.tenant)
            and flt.identity in (None, r.identity_key)
        )

    sel = [r for r in rows if keep(r)]

    def groups(key: Callable[[Any], Any]) -> dict[Any, list[Any]]:
        out: dict[Any, list[Any]] = {}
        for r in sel:
            out.setdefault(key(r), []).append(r)
        return out

    series = []
    moment = floor(flt.since, flt.bucket)
    by_bucket = groups(lambda r: floor(r.created_at, flt.bucket))
    while moment < flt.until:
        point = _view(by_bucket.get(moment, []))
        series.append({"t": moment.isoformat().replace("+00:00", "Z"), **point})
        moment += BUCKET_SIZES[flt.bucket]
    profiles = sorted(
        ({"profile": p, **_view(rs)} for p, rs in groups(lambda r: r.profile).items()),
        key=lambda i: (-i["costUsd"], -i["minutes"], -i["calls"], i["profile"]),
    )

    def rank(item: tuple[str, list[Any]]) -> tuple[Any, ...]:
        name, rs = item
        return (
            -sum(r.cost_usd or 0.0 for r in rs),
            -sum(r.duration_seconds or 0.0 for r in rs),
            -sum(1 for r in rs if r.kind != "chat"),
            name,
        )

    users = sorted(groups(lambda r: r.identity_key).items(), key=rank)[:top]
    top_users = [
        {
            "identity": name,
            "method": parse_identity_key(name)[0],
            "tenant": max((r.tenant for r in rs if r.tenant is not None), default=None),
            **_view(rs),
        }
        for name, rs in users
    ]
    return {"totals": _view(sel), "series": series, "profiles": profiles, "topUsers": top_users}


def _random_filter(rng: random.Random, rows: list[Any]) -> UsageFilter:
    if rng.random() < 0.2:  # whole hours only
        since = BASE + timedelta(hours=rng.randrange(-3, 72))
        until = since + timedelta(hours=rng.randrange(1, 48))
    elif rng.random() < 0.2:  # inside one hour
        since = BASE + timedelta(hours=rng.randrange(72), minutes=rng.randrange(50))
        until = since + timedelta(minutes=rng.randrange(1, 10))
    else:  # partial hours at both ends
        since = BASE + timedelta(seconds=rng.randrange(-7200, SPAN))
        until = since + timedelta(seconds=rng.randrange(1, SPAN))
    bucket: Bucket = rng.choice(["hour", "day"])
    pick = rng.choice(rows)
    which = rng.choice(["none", "none", "profile", "tenant", "identity"])
    return UsageFilter(
        since,
        until,
        bucket,
        profile=pick.profile if which == "profile" else None,
        tenant=(pick.tenant or "acme") if which == "tenant" else None,
        identity=pick.identity_key if which == "identity" else None,
    )


async def test_hourly_totals_and_every_answer_equal_the_raw_aggregate(db_url: str) -> None:
    ledger = Ledger.from_url(db_url)
    await ledger.start(auto_migrate=True)
    try:
        db = ledger.database
        for seed in range(3):
            rng = random.Random(seed)
            await _write_random_calls(ledger, rng, f"s{seed}")
            rows = await _rows(db)
            assert await _hourly_table(db) == _hourly_from_calls(rows)
            for _ in range(12):
                flt = _random_filter(rng, rows)
                want = _expected(rows, flt, top=4)
                assert await overview(db, flt, top=4) == want, flt
                assert await totals(db, flt) == want["totals"], flt
                assert await usage_series(db, flt) == want["series"], flt
                assert await by_profile(db, flt) == want["profiles"], flt
                assert await top_identities(db, flt, limit=4) == want["topUsers"], flt
    finally:
        await ledger.aclose()


async def test_a_settle_that_changes_cost_twice_counts_it_once(db_url: str) -> None:
    ledger = Ledger.from_url(db_url)
    await ledger.start(auto_migrate=True)
    try:
        db = ledger.database
        at = BASE + timedelta(hours=5, minutes=10)
        await ledger.record_call(
            call_id="c1", identity=Identity("ann", "api_key"), profile="support", created_at=at
        )
        for n, (cost, seconds) in enumerate([(1.5, 60.0), (2.25, 120.0), (0.5, 30.0)]):
            event = LedgerEvent(
                "end-of-call-report",
                "c1",
                f"r{n}",
                "ended",
                duration_seconds=seconds,
                cost_usd=cost,
            )
            await ledger.apply_events([(event, ())])
        table = await _hourly_table(db)
        assert table == {("2026-11-03 05", "api_key:ann", "support", ""): (1, 0, 30.0, 0.5)}
        whole = UsageFilter(BASE, BASE + timedelta(days=1), "hour")
        assert await totals(db, whole) == {"calls": 1, "chats": 0, "minutes": 0.5, "costUsd": 0.5}
    finally:
        await ledger.aclose()


async def test_the_migration_fills_the_totals_from_calls_already_recorded(db_url: str) -> None:
    db = Database(db_url)
    try:
        assert await upgrade_async(db, "0005") == "0005"
        rows = [
            {
                "id": f"old{i}",
                "kind": "chat" if i % 3 == 0 else "web",
                "identity_key": f"api_key:u{i % 2}",
                "identity_hash": f"{i:032x}",
                "auth_method": "api_key",
                "tenant": None if i % 2 else "acme",
                "profile": "support",
                "created_at": BASE + timedelta(minutes=25 * i),
                "status": "ended",
                "duration_seconds": float(i * 10) if i % 4 else None,
                "cost_usd": i / 8 if i % 5 else None,
                "updated_at": BASE,
            }
            for i in range(12)
        ]
        async with db.write() as conn:
            await conn.execute(calls.insert(), rows)
        assert await upgrade_async(db, "0007") == "0007"
        assert await _hourly_table(db) == _hourly_from_calls(await _rows(db))
        assert len(await _hourly_table(db)) > 4
    finally:
        await db.aclose()
