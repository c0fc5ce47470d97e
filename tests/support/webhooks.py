"""Webhook tests' helpers: the run's generated secrets, the proxy's verifier configurations,
the inbound number, and running or polling things on a proxy's own loop."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from vapi_proxy.testing import ServerThread

T = TypeVar("T")


INBOUND_NUMBER_ID = "pn-main"


INBOUND_NUMBER = "+15550100"


class Keys:
    """Secrets generated for this run, one per credential kind."""

    def __init__(self) -> None:
        self.bearer = secrets.token_urlsafe(24)
        self.custom = secrets.token_urlsafe(24)
        self.legacy = secrets.token_urlsafe(24)
        self.hmac = secrets.token_urlsafe(32)
        self.hmac512 = base64.b64encode(secrets.token_bytes(48)).decode()
        self.svix = secrets.token_urlsafe(32)
        self.app = secrets.token_urlsafe(32)


def write_secret(folder: Path, name: str, value: str) -> str:
    path = folder / name
    path.write_text(value + "\n", encoding="utf-8")
    return str(path)


VERIFIERS: dict[str, Callable[[Keys, Path], dict[str, Any]]] = {
    "bearer": lambda k, d: {"type": "bearer", "secret_file": write_secret(d, "b", k.bearer)},
    "bearer-custom": lambda k, d: {
        "type": "bearer",
        "header": "X-Webhook-Token",
        "prefix": False,
        "secret_file": write_secret(d, "c", k.custom),
    },
    "legacy": lambda k, d: {"type": "x-vapi-secret", "secret_file": write_secret(d, "l", k.legacy)},
    "hmac": lambda k, d: {"type": "hmac", "secret_file": write_secret(d, "h", k.hmac)},
    "hmac512": lambda k, d: {
        "type": "hmac",
        "algorithm": "sha512",
        "secret_is_base64": True,
        "signature_header": "x-vapi-signature",
        "signature_prefix": "sha512=",
        "signature_encoding": "base64",
        "secret_file": write_secret(d, "h5", k.hmac512),
    },
    "svix": lambda k, d: {
        "type": "hmac",
        "algorithm": "sha1",
        "payload_format": "{svix-id}.{timestamp}.{method}.{url}.{body}",
        "message_id_header": "svix-id",
        "secret_file": write_secret(d, "s", k.svix),
    },
}


HookProxyFactory = Callable[..., ServerThread]


def on_server(server: ServerThread, coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on the server's own event loop (its database engine lives there)."""
    assert server.loop is not None
    return asyncio.run_coroutine_threadsafe(coro, server.loop).result(timeout=10)


def runtime(server: ServerThread) -> Any:
    return server.app.runtime  # type: ignore[attr-defined]


def wait_for(check: Callable[[], T | None], *, timeout: float = 10.0) -> T:
    """Poll `check` until it returns something truthy; webhooks arrive over real sockets."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def start_web_call(
    server: ServerThread, token: str, profile: str = "sales-coach"
) -> httpx.Response:
    return httpx.post(
        server.url + "/call/web",
        json={"assistantId": profile},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
