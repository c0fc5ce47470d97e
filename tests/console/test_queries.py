"""The console's grouped usage queries give the same answers on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from tests.support.console import DAY, ROWS
from vapi_proxy.console.queries import (
    UsageFilter,
    by_profile,
    overview,
    top_identities,
    totals,
    usage_series,
)
from vapi_proxy.ledger.schema import calls
from vapi_proxy.ledger.store import Ledger


async def test_series_profiles_and_top_users_on_each_backend(db_url: str) -> None:
    ledger = Ledger.from_url(db_url)
    await ledger.start(auto_migrate=True)
    try:
        db = ledger.database
        async with db.write() as conn:
            await conn.execute(calls.insert(), ROWS)
        hourly = UsageFilter(DAY + timedelta(hours=8), DAY + timedelta(hours=12), "hour")
        series = await usage_series(db, hourly)
        assert [(p["t"], p["calls"], p["chats"], p["costUsd"]) for p in series] == [
            ("2026-11-03T08:00:00Z", 0, 0, 0.0),
            ("2026-11-03T09:00:00Z", 2, 0, 1.75),
            ("2026-11-03T10:00:00Z", 0, 0, 0.0),
            ("2026-11-03T11:00:00Z", 1, 1, 0.11),
        ]
        daily = UsageFilter(DAY - timedelta(days=3), DAY + timedelta(days=1), "day")
        assert [p["calls"] for p in await usage_series(db, daily)] == [1, 0, 0, 3]
        assert [p["profile"] for p in await by_profile(db, hourly)] == ["support", "sales-coach"]
        top = await top_identities(db, daily, limit=1)
        assert [(u["identity"], u["costUsd"]) for u in top] == [("api_key:alice", 2.25)]
        acme = UsageFilter(daily.since, daily.until, "day", tenant="acme")
        assert await totals(db, acme) == {"calls": 1, "chats": 1, "minutes": 0.5, "costUsd": 0.11}
    finally:
        await ledger.aclose()


async def test_the_two_scan_overview_agrees_with_the_single_queries(db_url: str) -> None:
    ledger = Ledger.from_url(db_url)
    await ledger.start(auto_migrate=True)
    try:
        db = ledger.database
        async with db.write() as conn:
            await conn.execute(calls.insert(), ROWS)
        for flt in [
            UsageFilter(DAY + timedelta(hours=8), DAY + timedelta(hours=12), "hour"),
            UsageFilter(DAY - timedelta(days=3), DAY + timedelta(days=1), "day"),
            UsageFilter(DAY - timedelta(days=3), DAY + timedelta(days=1), "day", tenant="acme"),
        ]:
            seen = await overview(db, flt, top=10)
            assert seen["totals"] == await totals(db, flt)
            assert seen["series"] == await usage_series(db, flt)
            assert seen["profiles"] == await by_profile(db, flt)
            assert seen["topUsers"] == await top_identities(db, flt, limit=10)
    finally:
        await ledger.aclose()
