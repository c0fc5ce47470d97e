"""A stand-in for the app's own server: records what the proxy forwards, answers as told."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send


@dataclass
class AppStub:
    """ASGI app; `reply` is sent as JSON after `delay` seconds with `status`."""

    status: int = 200
    reply: Any = field(default_factory=dict)
    delay: float = 0.0
    received: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.received.append(
            {
                "path": scope["path"],
                "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                "body": body,
            }
        )
        if self.delay:
            await asyncio.sleep(self.delay)  # the slowness under test
        payload = orjson.dumps(self.reply)
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})
