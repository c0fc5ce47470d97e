"""Health: `/healthz` says the process is alive; it never touches Vapi or spends money."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_OK = b'{"status":"ok"}'


async def healthz(request: Request) -> Response:
    return Response(_OK, media_type="application/json", headers={"Cache-Control": "no-store"})


def routes() -> list[Route]:
    return [Route("/healthz", healthz, methods=["GET"])]
