"""`GET /metrics`: Prometheus text for scrapers on allowed networks (others get 404)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vapi_proxy.errors import NotFoundError
from vapi_proxy.ledger.schema import calls
from vapi_proxy.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from vapi_proxy.app import Runtime

logger = logging.getLogger("vapi_proxy.metrics")
_LIVE = ("queued", "ringing", "in-progress", "forwarding")


def internal_peer_check(allowed_networks: list[str]) -> Callable[[Request], bool]:
    """Whether a request's TCP peer (never a forwarded header) is on one of the networks
    allowed to see operator data (metrics, readiness details)."""
    networks = [ipaddress.ip_network(n) for n in allowed_networks]

    def internal(request: Request) -> bool:
        if request.client is None:
            return False
        try:
            peer = ipaddress.ip_address(request.client.host)
        except ValueError:
            return False
        return any(peer in network for network in networks)

    return internal


async def live_calls(runtime: Runtime) -> int:
    """Calls (not chats) the ledger holds as still live: shared by every worker and replica."""
    query = (
        sa.select(sa.func.count())
        .select_from(calls)
        .where(calls.c.status.in_(_LIVE), calls.c.kind != "chat")
    )
    async with runtime.ledger.database.read() as conn:
        return int((await conn.execute(query)).scalar_one())


def routes(runtime: Runtime) -> list[Route]:
    settings = runtime.settings.metrics
    if not settings.enabled:
        return []
    allowed = internal_peer_check(settings.allowed_networks)

    async def metrics(request: Request) -> Response:
        if not allowed(request):
            raise NotFoundError(f"Cannot GET {settings.path}: no such route.")
        runtime.metrics.sync(runtime.auth.stats, runtime.webhook_stats)
        try:
            runtime.metrics.live_calls.set(await live_calls(runtime))
        except Exception:
            runtime.metrics.storage_errors.labels("ledger").inc()
            logger.warning("live-call count failed", exc_info=True)
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)

    return [Route(settings.path, metrics, methods=["GET"])]
