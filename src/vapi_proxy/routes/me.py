"""`GET /me/usage`: an end user's own usage and what is left under each limit that applies to
them, with the same credentials as their calls, so an app can show "12 minutes left this month"
before it starts one. Nobody sees anyone else's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vapi_proxy.console.limits_view import remaining
from vapi_proxy.console.queries import UsageFilter, totals
from vapi_proxy.console.store import iso
from vapi_proxy.edge.middleware import request_state
from vapi_proxy.errors import NotFoundError
from vapi_proxy.ledger.records import utc_now
from vapi_proxy.routes.common import identify, json_response
from vapi_proxy.routes.query import read_query

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from vapi_proxy.runtime import Runtime


class MyUsageRoute:
    """`GET /me/usage` over one `Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _profile_name(self, name: str, raw: str) -> str:
        if raw not in self.runtime.profiles:
            raise NotFoundError(f"No profile named '{raw[:64]}'.")
        return raw

    async def my_usage(self, request: Request) -> Response:
        runtime = self.runtime
        state = request_state(request.scope)
        # Not `authenticate`: a blocked user may still see that (and why) they are.
        identity = await identify(runtime, request)
        state.identity = identity.hashed
        query = read_query(request, {"profile": self._profile_name})
        profile = query.get("profile")
        now = utc_now()
        day, month = calendar_starts(now, runtime.settings.limits.zone)
        usage = {
            "today": await self._totals(identity.key, profile, day, now),
            "thisMonth": await self._totals(identity.key, profile, month, now),
        }
        block = await runtime.blocks.find(identity.key)
        payload = {
            "identity": identity.key,
            "tenant": identity.tenant,
            "profile": profile,
            "usage": usage,
            "limits": await remaining(runtime.limiter, identity, profile),
            "blocked": None
            if block is None
            else {"reason": block.reason, "expiresAt": iso(block.expires_at)},
        }
        return json_response(orjson.dumps(payload))

    async def _totals(
        self, identity_key: str, profile: str | None, start: datetime, now: datetime
    ) -> dict[str, object]:
        flt = UsageFilter(
            since=start,
            until=now + timedelta(seconds=1),
            bucket="day",
            identity=identity_key,
            profile=profile,
        )
        return await totals(self.runtime.ledger.database, flt)


def calendar_starts(now: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The starts of the calendar day and month containing `now` in `zone` (`limits.time_zone`:
    the quotas' and budgets' own calendar, so "today" here is the day they count), in UTC. A
    midnight the zone skips (a spring-forward at 00:00) starts the day at the first instant that
    exists, as `limits.core.calendar_window` ends the day before there."""
    local = now.astimezone(zone)
    day = datetime(local.year, local.month, local.day, tzinfo=zone)
    month = datetime(local.year, local.month, 1, tzinfo=zone)
    return day.astimezone(UTC), month.astimezone(UTC)


def routes(runtime: Runtime) -> list[Route]:
    return [Route("/me/usage", MyUsageRoute(runtime).my_usage, methods=["GET"])]
