"""Chat routes: `POST /chat`, `/chat/responses`, `/chat/web`, `/chat/web/responses`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Route

if TYPE_CHECKING:
    from vapi_proxy.app import Runtime


def routes(runtime: Runtime) -> list[Route]:
    return []
