"""Live calls for the console, and ending one through Vapi's live-call control.

The control URL (`monitor.controlUrl` of Vapi's Call) is kept in the ledger when the call is
created, or taken from the first webhook that carries it, and never shown to any client; a call
still without one (created by an older version) has it looked up from Vapi with the private key. The
`{"type": "end-call"}` message is sent without the private key: the control URL carries its own
authority (Vapi facts §2.6), and the key must not go to any other host.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import sqlalchemy as sa

from vapi_proxy.console.store import iso
from vapi_proxy.errors import NotFoundError, ProxyError, UpstreamError
from vapi_proxy.ledger.records import utc_now
from vapi_proxy.ledger.schema import calls
from vapi_proxy.upstream.client import call_path
from vapi_proxy.upstream.replies import parse_success

if TYPE_CHECKING:
    from vapi_proxy.ledger.engine import Database
    from vapi_proxy.upstream.client import UpstreamClient

logger = logging.getLogger("vapi_proxy.console.calls")

LIVE_STATUSES = ("queued", "ringing", "in-progress", "forwarding")
CONTROL_TIMEOUT_SECONDS = 5.0


def control_url(call: Mapping[str, Any]) -> str | None:
    """`monitor.controlUrl` of a Vapi Call object, if it has an http(s) one."""
    monitor = call.get("monitor")
    if not isinstance(monitor, (dict, Mapping)):  # dict first: the ABC's check is slow
        return None
    url = monitor.get("controlUrl")
    if isinstance(url, str) and url.startswith(("https://", "http://")) and len(url) <= 2048:
        return url
    return None


async def live_calls(
    database: Database,
    *,
    identity_key: str | None = None,
    profile: str | None = None,
    limit: int = 200,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Calls the ledger holds as live, oldest first, with their duration so far."""
    now = now or utc_now()
    query = (
        sa.select(
            calls.c.id,
            calls.c.kind,
            calls.c.identity_key,
            calls.c.tenant,
            calls.c.profile,
            calls.c.status,
            calls.c.created_at,
            calls.c.started_at,
            calls.c.cost_usd,
            calls.c.max_duration_seconds,
        )
        .where(calls.c.status.in_(LIVE_STATUSES), calls.c.kind != "chat")
        .order_by(calls.c.created_at, calls.c.id)
        .limit(limit)
    )
    if identity_key is not None:
        query = query.where(calls.c.identity_key == identity_key)
    if profile is not None:
        query = query.where(calls.c.profile == profile)
    async with database.read() as conn:
        rows = (await conn.execute(query)).all()
    items = []
    for row in rows:
        began = row.started_at or row.created_at
        items.append(
            {
                "id": row.id,
                "kind": row.kind,
                "identity": row.identity_key,
                "tenant": row.tenant,
                "profile": row.profile,
                "status": row.status,
                "createdAt": iso(row.created_at),
                "startedAt": iso(row.started_at),
                "durationSeconds": round(max(0.0, (now - began).total_seconds()), 1),
                "costUsd": row.cost_usd,
                "maxDurationSeconds": row.max_duration_seconds,
            }
        )
    return items


async def end_call(database: Database, upstream: UpstreamClient, call_id: str) -> dict[str, Any]:
    """Ask Vapi to end a live call; the end-of-call webhook then settles it as usual."""
    query = sa.select(calls.c.status, calls.c.kind, calls.c.control_url).where(
        calls.c.id == call_id
    )
    async with database.read() as conn:
        row = (await conn.execute(query)).first()
    if row is None or row.kind == "chat":
        raise NotFoundError("No such call in the ledger.")
    if row.status not in LIVE_STATUSES:
        raise ProxyError(f"The call is not live (it is {row.status}).", status_code=409)
    url = row.control_url or await _look_up_control_url(database, upstream, call_id)
    if url is None:
        raise ProxyError(
            "Vapi gave no control URL for this call (its monitorPlan may disable control).",
            status_code=409,
        )
    try:
        async with upstream.session.post(
            url,
            data=orjson.dumps({"type": "end-call"}),
            headers={"Content-Type": "application/json"},
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=CONTROL_TIMEOUT_SECONDS),
        ) as response:
            status = response.status
            await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("end-call failed", extra={"fields": {"call_id": call_id}}, exc_info=True)
        raise UpstreamError("Vapi's live-call control could not be reached.") from exc
    if status >= 300:
        logger.warning("end-call refused", extra={"fields": {"call_id": call_id, "status": status}})
        raise UpstreamError(f"Vapi's live-call control refused to end the call ({status}).")
    return {"id": call_id, "ending": True}


async def _look_up_control_url(
    database: Database, upstream: UpstreamClient, call_id: str
) -> str | None:
    reply = await upstream.request("GET", call_path(call_id))
    url = control_url(parse_success(reply))
    if url is not None:
        async with database.write() as conn:
            await conn.execute(calls.update().where(calls.c.id == call_id).values(control_url=url))
    return url
