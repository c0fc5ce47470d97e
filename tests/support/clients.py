"""Shared by the phone, call-read, chat and client tests: a seeded phone number, profiles that
use it, a simulator that streams slowly and records what it saw, and proxies in front of it."""

from __future__ import annotations

import asyncio
import atexit
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.support.proxy import SAVED_ASSISTANT_ID, base_config
from vapi_proxy.app import create_app
from vapi_proxy.sandbox import RunningSandbox, SandboxSettings, SeededAssistant, SeededPhoneNumber
from vapi_proxy.sandbox import create_app as create_sandbox_app
from vapi_proxy.sandbox.settings import ChatSettings
from vapi_proxy.settings import Secrets, parse_settings
from vapi_proxy.testing import ServerThread

# One client for every test: building an httpx client (its TLS context) costs ~0.3 s.
HTTP = httpx.Client(timeout=10.0)
atexit.register(HTTP.close)

PHONE_ID = "7a3e0b5c-1d2f-4e6a-8b9c-0d1e2f3a4b5c"
PHONE_NUMBER = "+14155550100"


def seed_phone_number(sandbox: RunningSandbox) -> None:
    """Give the shared simulator the number the `outbound` profile rings from."""
    sandbox.state.phone_numbers.setdefault(
        PHONE_ID,
        {"id": PHONE_ID, "number": PHONE_NUMBER, "orgId": sandbox.settings.org_id},
    )


def phone_profiles(config: dict[str, Any]) -> None:
    """Patch for `make_proxy`: profiles that make phone calls."""
    config["profiles"]["outbound"] = {
        "assistant_id": SAVED_ASSISTANT_ID,
        "phone_number_id": PHONE_ID,
        "phone": {
            "allowed_prefixes": ["+1", "+44"],
            "denied_prefixes": ["+1555"],
            "customer_fields": ["name"],
            "max_batch": 3,
        },
        "client_variables": {"firstName": {"type": "string", "max_length": 40}},
        "variables": {"caller": "{{identity.sub}}"},
        "max_duration_seconds": 300,
    }
    config["profiles"]["outbound-single"] = {
        "assistant_id": SAVED_ASSISTANT_ID,
        "phone_number_id": PHONE_ID,
        "phone": {"allowed_prefixes": ["+"]},
    }


@dataclass
class StreamLog:
    """What the simulator saw of each request: when its handler ended, whether the client
    (the proxy) disconnected."""

    finished: dict[str, float] = field(default_factory=dict)
    disconnected: dict[str, float] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    counter: int = 0


class Observer:
    """ASGI middleware around the simulator recording request lifetimes and disconnects."""

    def __init__(self, app: ASGIApp, log: StreamLog) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.log.counter += 1
        key = f"{self.log.counter}:{scope['path']}"
        self.log.started[key] = time.monotonic()

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.log.disconnected.setdefault(key, time.monotonic())
            return message

        try:
            await self.app(scope, watched_receive, send)
        finally:
            self.log.finished[key] = time.monotonic()


@dataclass
class ObservedSandbox:
    sandbox: RunningSandbox
    log: StreamLog
    server: ServerThread

    def open_connections(self) -> int:
        """TCP connections the simulator's uvicorn holds right now."""
        return len(self.server._server.server_state.connections)


@contextmanager
def observed_sandbox(delay: float = 0.05, chunk_chars: int = 8) -> Iterator[ObservedSandbox]:
    """A simulator whose chat streams pause `delay` seconds between deltas, observed."""
    settings = SandboxSettings(
        admin_enabled=True,
        assistants=[SeededAssistant(id=SAVED_ASSISTANT_ID, name="Sales coach")],
        phone_numbers=[SeededPhoneNumber(id=PHONE_ID, number=PHONE_NUMBER)],
        chat=ChatSettings(stream_delay_seconds=delay, chunk_chars=chunk_chars),
        request_log_enabled=True,
    )
    app = create_sandbox_app(settings)
    log = StreamLog()
    with ServerThread(Observer(app, log)) as server:
        yield ObservedSandbox(
            RunningSandbox(server.url, settings, app, app.state.sandbox), log, server
        )


@contextmanager
def proxy_for(
    sandbox: RunningSandbox,
    user_key: str,
    other_key: str,
    folder: str,
    patch: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[ServerThread]:
    config = base_config(sandbox.url, user_key, other_key)
    config["ledger"] = {"url": f"sqlite:///{folder}/ledger.db"}
    if patch is not None:
        patch(config)
    settings = parse_settings(config, environ={})
    key = sandbox.settings.private_key.get_secret_value()
    with ServerThread(create_app(settings, Secrets(vapi_api_key=SecretStr(key)))) as server:
        yield server


def upstream_requests(sandbox: RunningSandbox, path_prefix: str = "/") -> list[dict[str, Any]]:
    entries = HTTP.get(f"{sandbox.url}/__sandbox/requests").json()
    return [e for e in entries if str(e["path"]).startswith(path_prefix)]


def clear_requests(sandbox: RunningSandbox) -> None:
    HTTP.delete(f"{sandbox.url}/__sandbox/requests")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def wait_for(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll `check` every 10 ms for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.01)
    return check()


def wait_until(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll `check` every 10 ms for at most `timeout` seconds (for synchronous tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()
