"""A stand-in for the app's own server: records what the proxy forwards, answers as told."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send


@dataclass
class AppStub:
    """ASGI app; `reply` is sent as JSON with `status`, once `hold` (when given) is set.

    `hold` is a threading.Event because the stub serves on its own thread (ServerThread): the
    test sets it, and must set it before the server stops. `answered` counts replies sent, or
    being sent."""

    status: int = 200
    reply: Any = field(default_factory=dict)
    hold: threading.Event | None = None
    received: list[dict[str, Any]] = field(default_factory=list)
    answered: int = 0

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
        if self.hold is not None:
            await asyncio.to_thread(self.hold.wait)  # an app that has not answered yet
        payload = orjson.dumps(self.reply)
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        # Counted before the body goes out: counted after, a client holding the reply could
        # still read the old count (this thread resumes after the bytes are written). CI saw it.
        self.answered += 1
        await send({"type": "http.response.body", "body": payload})
