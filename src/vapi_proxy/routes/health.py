"""Health: `/healthz` says the process is alive; `/readyz` that it can serve (config loaded,
ledger and limits store reachable, every auth method able to verify its callers: a JWKS cached
or fetchable). Neither ever calls Vapi or spends money. The per-store
details of `/readyz` (backends, errors) are shown only to clients on the metrics networks (the
resolved client, not a balancer relaying the public); others get the status alone."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vapi_proxy.routes.common import internal_client_check

if TYPE_CHECKING:
    from vapi_proxy.runtime import Runtime

_OK = b'{"status":"ok"}'
_HEADERS = {"Cache-Control": "no-store"}
CHECK_TIMEOUT = 2.0


async def healthz(request: Request) -> Response:
    return Response(_OK, media_type="application/json", headers=_HEADERS)


class HealthRoutes:
    """`/healthz` and `/readyz` over one `Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._internal = internal_client_check(
            runtime.settings.metrics.allowed_networks, runtime.auth.client_address
        )

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
        ]

    async def readyz(self, request: Request) -> Response:
        runtime = self.runtime
        checks: dict[str, Any] = {"config": {"ok": True, "profiles": len(runtime.profiles)}}
        # Alongside the store checks, so a probe still answers within a few seconds.
        auth = asyncio.ensure_future(runtime.auth.health(CHECK_TIMEOUT))
        try:
            ledger = await asyncio.wait_for(runtime.ledger.health(), CHECK_TIMEOUT)
            checks["ledger"] = {"ok": ledger.ok, "backend": ledger.backend, "detail": ledger.detail}
        except TimeoutError:
            checks["ledger"] = {"ok": False, "detail": "timed out"}
        try:
            limits = await asyncio.wait_for(runtime.limiter.health(), CHECK_TIMEOUT)
            checks["limits"] = {
                "ok": limits.ok,
                "backend": limits.backend,
                "detail": limits.detail,
                "failure_mode": limits.failure_mode,
            }
        except TimeoutError:
            checks["limits"] = {"ok": False, "detail": "timed out"}
        # What callers would get: a JWKS that is down with no keys cached refuses them all.
        checks["auth"] = await auth
        # A limits store that is down with every rule failing open still admits calls.
        limits_ok = checks["limits"]["ok"] or checks["limits"].get("failure_mode") == "open"
        ready = checks["ledger"]["ok"] and limits_ok and checks["auth"]["ok"]
        report: dict[str, Any] = {"status": "ready" if ready else "unavailable"}
        if self._internal(request):
            report["checks"] = checks
        body = orjson.dumps(report)
        return Response(
            body,
            status_code=200 if ready else 503,
            media_type="application/json",
            headers=_HEADERS,
        )


def routes(runtime: Runtime) -> list[Route]:
    return HealthRoutes(runtime).routes()
