"""Webhook route: `POST {webhook_path}`, where Vapi delivers its server messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Route

if TYPE_CHECKING:
    from vapi_proxy.app import Runtime


def routes(runtime: Runtime) -> list[Route]:
    return []
