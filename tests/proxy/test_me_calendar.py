"""`GET /me/usage`'s "today" and "thisMonth" are the limits' calendar (`limits.time_zone`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.support.console import usage_row
from tests.support.http import post
from tests.support.proxy import ProxyFactory
from tests.support.webhooks import on_server, runtime
from vapi_proxy.ledger.records import utc_now
from vapi_proxy.ledger.schema import calls
from vapi_proxy.limits.core import calendar_window
from vapi_proxy.routes.me import calendar_starts


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "now", "day", "month"),
    [
        ("UTC", "2026-12-06T19:00:00", "2026-12-06T00:00:00", "2026-12-01T00:00:00"),
        # Tokyo's 6 December starts at 15:00 UTC on the 5th; at 16:00 UTC it is already the 7th.
        ("Asia/Tokyo", "2026-12-06T14:59:59", "2026-12-05T15:00:00", "2026-11-30T15:00:00"),
        ("Asia/Tokyo", "2026-12-06T16:00:00", "2026-12-06T15:00:00", "2026-11-30T15:00:00"),
        ("America/New_York", "2026-12-01T03:00:00", "2026-11-30T05:00:00", "2026-11-01T04:00:00"),
        # Santiago skips 00:00-01:00 on 6 September 2026: the day starts at 01:00 (-03) = 04:00Z.
        ("America/Santiago", "2026-09-06T12:00:00", "2026-09-06T04:00:00", "2026-09-01T04:00:00"),
    ],
)
def test_today_and_this_month_start_at_the_zones_midnight(
    zone: str, now: str, day: str, month: str
) -> None:
    assert calendar_starts(utc(now), ZoneInfo(zone)) == (utc(day), utc(month))


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo", "America/Santiago", "Pacific/Kiritimati"])
def test_today_starts_where_the_quotas_yesterday_ended(zone: str) -> None:
    """The same boundary as the limits' own day: usage "today" is what a daily quota counts."""
    tz = ZoneInfo(zone)
    for hours in range(0, 24 * 400, 7):
        now = utc("2026-01-01T00:30:00").timestamp() + hours * 3600
        day, month = calendar_starts(datetime.fromtimestamp(now, UTC), tz)
        assert calendar_window(day.timestamp() - 1, tz, "day")[1] == day.timestamp()
        assert calendar_window(month.timestamp() - 1, tz, "month")[1] == month.timestamp()
        assert day.timestamp() <= now < calendar_window(now, tz, "day")[1]


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_me_usage_today_is_the_quotas_day(
    make_proxy: ProxyFactory, user_key: str, zone: str
) -> None:
    """A call just before the zone's midnight is yesterday's, one just after is today's, as the
    daily quota beside them counts (UTC+14 and UTC-11: UTC's day boundary is far from both)."""

    def limits(config: dict[str, Any]) -> None:
        config["limits"] = {
            "time_zone": zone,
            "rules": [{"name": "daily", "quota": {"per_day": 5}}],
        }

    server = make_proxy(limits)
    tz = ZoneInfo(zone)
    start, _ = calendar_starts(utc_now(), tz)
    if utc_now() - start < timedelta(seconds=5):  # the zone's day began just now: let it settle
        time.sleep(5)
        start, _ = calendar_starts(utc_now(), tz)
    rows = [
        usage_row("before", start - timedelta(seconds=1), "api_key:alice", "sales-coach"),
        usage_row("after", start + timedelta(seconds=1), "api_key:alice", "sales-coach"),
    ]

    async def insert() -> None:
        async with runtime(server).ledger.database.write() as conn:
            await conn.execute(calls.insert(), rows)

    on_server(server, insert())
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201
    reply = httpx.get(server.url + "/me/usage", headers={"Authorization": f"Bearer {user_key}"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["usage"]["today"]["calls"] == 2, body  # "after" and the call just made
    quota = next(r for r in body["limits"] if r["what"] == "quota")
    assert quota["used"] == 1
    assert quota["resetsAt"] == (start + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
