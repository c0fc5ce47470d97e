"""Helpers for the simulator's tests: settings, auth headers, a webhook receiver, polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vapi_proxy.sandbox import (
    SandboxSettings,
    SeededAssistant,
    SeededPhoneNumber,
)

ASSISTANT_ID = "5a0c6a0e-1111-4a4a-9b9b-000000000001"
NUMBER_ID = "5a0c6a0e-2222-4a4a-9b9b-000000000002"
INBOUND_NUMBER_ID = "5a0c6a0e-3333-4a4a-9b9b-000000000003"


def base_settings(**overrides: Any) -> SandboxSettings:
    fields: dict[str, Any] = {
        "admin_enabled": True,
        "assistants": [SeededAssistant(id=ASSISTANT_ID, name="Seeded", firstMessage="Hi there")],
        "phone_numbers": [
            SeededPhoneNumber(id=NUMBER_ID, number="+15550100", assistantId=ASSISTANT_ID),
            SeededPhoneNumber(id=INBOUND_NUMBER_ID, number="+15550101"),
        ],
    }
    fields.update(overrides)
    return SandboxSettings(**fields)


def private(sb: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {sb.settings.private_key.get_secret_value()}"}


def public(sb: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {sb.settings.public_key.get_secret_value()}"}


class Receiver:
    """A webhook receiver on loopback: records each POST, answers per message type."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.replies: dict[str, Any] = {}
        self.delay: dict[str, float] = {}
        self.status = 200
        self.app = Starlette(routes=[Route("/{name}", self._hook, methods=["POST"])])

    def reset(self) -> None:
        self.received.clear()
        self.replies.clear()
        self.delay.clear()
        self.status = 200

    async def _hook(self, request: Request) -> Response:
        raw = await request.body()
        body = await request.json()
        kind = body["message"]["type"]
        self.received.append(
            {"path": request.url.path, "headers": dict(request.headers), "raw": raw, "body": body}
        )
        if kind in self.delay:
            await asyncio.sleep(self.delay[kind])
        return JSONResponse(self.replies.get(kind, {}), status_code=self.status)

    def types(self) -> list[str]:
        return [r["body"]["message"]["type"] for r in self.received]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} deliveries, got {self.types()}")
            time.sleep(0.01)
        return self.received


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
