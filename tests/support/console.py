"""The console tests' helpers: proxies with admin on, signed-in clients, a day of ledger rows
for the usage views, a call's status read from the ledger."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from starlette.routing import Route

from tests.support.proxy import ProxyFactory
from tests.support.webhooks import HookProxyFactory, on_server, runtime
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


DAY = datetime(2026, 11, 3, tzinfo=UTC)


def usage_row(
    call_id: str, at: datetime, identity: str, profile: str, **extra: Any
) -> dict[str, Any]:
    method, _, _subject = identity.partition(":")
    row = {
        "id": call_id,
        "kind": "web",
        "identity_key": identity,
        "identity_hash": "h",
        "auth_method": method,
        "tenant": None,
        "profile": profile,
        "created_at": at,
        "updated_at": at,
        "status": "ended",
        "duration_seconds": 60.0,
        "cost_usd": 0.5,
    }
    row.update(extra)
    return row


ROWS = [
    usage_row("c1", DAY + timedelta(hours=9, minutes=5), "api_key:alice", "sales-coach"),
    usage_row(
        "c2",
        DAY + timedelta(hours=9, minutes=50),
        "api_key:alice",
        "support",
        duration_seconds=120.0,
        cost_usd=1.25,
    ),
    usage_row(
        "c3",
        DAY + timedelta(hours=11),
        "api_key:bob",
        "support",
        tenant="acme",
        duration_seconds=30.0,
        cost_usd=0.1,
    ),
    usage_row(
        "c4",
        DAY + timedelta(hours=11, minutes=1),
        "api_key:bob",
        "support",
        kind="chat",
        tenant="acme",
        duration_seconds=None,
        cost_usd=0.01,
    ),
    usage_row("old", DAY - timedelta(days=3), "api_key:alice", "sales-coach"),
]


def hook_proxy_with_admin(make_hook_proxy: HookProxyFactory, admin_key: str) -> ServerThread:
    def patch(config: dict[str, Any]) -> None:
        config["admin"] = {"key_hashes": [hash_key(admin_key)]}

    return make_hook_proxy("hmac", patch)


def ledger_status(server: ServerThread, call_id: str) -> str | None:
    record = on_server(server, runtime(server).ledger.get_call(call_id))
    return None if record is None else record.status
