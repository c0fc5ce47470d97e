"""Shared helpers for the console tests: a proxy with admin on, and signed-in clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from starlette.routing import Route

from tests.support.proxy import ProxyFactory
from vapi_proxy.auth.api_key import hash_key
from vapi_proxy.testing import ServerThread


def admin_proxy(
    make_proxy: ProxyFactory,
    admin_key: str,
    extra: Callable[[dict[str, Any]], None] | None = None,
    **admin: Any,
) -> ServerThread:
    def patch(config: dict[str, Any]) -> None:
        config["admin"] = {"key_hashes": [hash_key(admin_key)], **admin}
        if extra is not None:
            extra(config)

    return make_proxy(patch)


def admin_routes(server: ServerThread) -> list[tuple[str, str]]:
    """(method, path) of every admin route the running app has, read from its router."""
    router = server.app.app  # EdgeMiddleware → Router
    found = []
    for route in router.routes:
        if isinstance(route, Route) and route.path.startswith(("/admin", "/me")):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    found.append((method, route.path))
    return found


def signed_in(server: ServerThread, admin_key: str) -> tuple[httpx.Client, str]:
    """A client holding a console session cookie, and the session's CSRF token."""
    client = httpx.Client(base_url=server.url, timeout=10)
    reply = client.post("/admin/api/session", json={"key": admin_key})
    assert reply.status_code == 200, reply.text
    return client, reply.json()["csrfToken"]
