"""`GET /me/usage`: an end user's own usage and what is left under each limit that applies to
them, with the same credentials as their calls, so an app can show "12 minutes left this month"
before it starts one. Nobody sees anyone else's."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vapi_proxy.console.limits_view import remaining
from vapi_proxy.console.queries import UsageFilter, totals
from vapi_proxy.console.store import iso
from vapi_proxy.edge.middleware import plain_headers, request_state
from vapi_proxy.errors import NotFoundError
from vapi_proxy.ledger.records import utc_now
from vapi_proxy.routes.query import read_query

if TYPE_CHECKING:
    from vapi_proxy.runtime import Runtime


def routes(runtime: Runtime) -> list[Route]:
    def profile_name(name: str, raw: str) -> str:
        if raw not in runtime.profiles:
            raise NotFoundError(f"No profile named '{raw[:64]}'.")
        return raw

    async def my_usage(request: Request) -> Response:
        state = request_state(request.scope)
        headers = plain_headers(request.scope)
        client = request.client
        # Not routes.calls.authenticate: a blocked user may still see that (and why) they are.
        identity = await runtime.auth.authenticate(
            headers.get("authorization"), client.host if client else "", headers
        )
        state.identity = identity.hashed
        query = read_query(request, {"profile": profile_name})
        profile = query.get("profile")
        now = utc_now()
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        month = day.replace(day=1)
        db = runtime.ledger.database

        async def since(start: datetime) -> dict[str, object]:
            flt = UsageFilter(
                since=start,
                until=now + timedelta(seconds=1),
                bucket="day",
                identity=identity.key,
                profile=profile,
            )
            return await totals(db, flt)

        block = await runtime.blocks.find(identity.key)
        payload = {
            "identity": identity.key,
            "tenant": identity.tenant,
            "profile": profile,
            "usage": {"today": await since(day), "thisMonth": await since(month)},
            "limits": await remaining(runtime.limiter, identity, profile),
            "blocked": None
            if block is None
            else {"reason": block.reason, "expiresAt": iso(block.expires_at)},
        }
        return Response(
            orjson.dumps(payload),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    return [Route("/me/usage", my_usage, methods=["GET"])]
