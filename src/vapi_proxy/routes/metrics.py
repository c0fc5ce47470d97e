"""`GET /metrics`: Prometheus text for scrapers on allowed networks (others get 404).

"Allowed" is about the client, resolved like everywhere else (`ClientAddressResolver`): behind a
load balancer the TCP peer is the balancer, on a private network, and relays the public too.
With `metrics.port` the text is served on that port instead (cli.py) and kept fresh here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vapi_proxy.errors import NotFoundError
from vapi_proxy.ledger.schema import calls
from vapi_proxy.metrics import CONTENT_TYPE
from vapi_proxy.routes.common import internal_client_check

if TYPE_CHECKING:
    from vapi_proxy.runtime import Runtime

logger = logging.getLogger("vapi_proxy.metrics")
_LIVE = ("queued", "ringing", "in-progress", "forwarding")


REFRESH_SECONDS = 5.0
"""How often, with `metrics.port`, the values read at scrape time on the main port are taken."""


async def refresh(runtime: Runtime) -> None:
    """Bring the value kept outside the registry (live calls, from the ledger) in; counters are
    recorded as their events happen (metrics.py)."""
    try:
        runtime.metrics.live_calls.set(await live_calls(runtime))
    except Exception:
        runtime.metrics.storage_errors.labels("ledger").inc()
        logger.warning("live-call count failed", exc_info=True)


async def keep_fresh(runtime: Runtime, interval: float = REFRESH_SECONDS) -> None:
    """With `metrics.port`, no request reaches `refresh` through this app: run it on a timer."""
    while True:
        await refresh(runtime)
        await asyncio.sleep(interval)


async def live_calls(runtime: Runtime) -> int:
    """Calls (not chats) the ledger holds as still live: shared by every worker and replica."""
    query = (
        sa.select(sa.func.count())
        .select_from(calls)
        .where(calls.c.status.in_(_LIVE), calls.c.kind != "chat")
    )
    async with runtime.ledger.database.read() as conn:
        return int((await conn.execute(query)).scalar_one())


class MetricsRoute:
    """`GET {metrics.path}` over one `Runtime`, for clients on the allowed networks."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._settings = runtime.settings.metrics
        self._allowed = internal_client_check(
            self._settings.allowed_networks, runtime.auth.client_address
        )

    def routes(self) -> list[Route]:
        if not self._settings.enabled:
            return []
        return [Route(self._settings.path, self.metrics, methods=["GET"])]

    async def metrics(self, request: Request) -> Response:
        if not self._allowed(request):
            raise NotFoundError(f"Cannot GET {self._settings.path}: no such route.")
        await refresh(self.runtime)
        return Response(self.runtime.metrics.render(), media_type=CONTENT_TYPE)


def routes(runtime: Runtime) -> list[Route]:
    return MetricsRoute(runtime).routes()
