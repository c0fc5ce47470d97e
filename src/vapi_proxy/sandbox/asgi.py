"""The few raw-ASGI pieces the simulator is built from: a parsed request and reply senders.

Starlette's Request/Response cost a noticeable share per request on the hot `/call/web`
route, so handlers get this small `Request` and answer through `send_json`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = [(b"content-type", b"application/json; charset=utf-8")]


class Request:
    """Method, path, headers (lower-case names) and, once `read()`, body and parsed JSON."""

    __slots__ = ("_headers", "_query", "body", "method", "path", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.body = b""
        self._query: dict[str, str] | None = None
        self._headers: dict[str, str] | None = None

    def header(self, name: bytes) -> str | None:
        """One header (lower-case name) without decoding the rest: the hot path needs three."""
        for key, value in self.scope["headers"]:
            if key == name:
                return str(value.decode("latin-1"))
        return None

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {
                k.decode("latin-1"): v.decode("latin-1") for k, v in self.scope["headers"]
            }
        return self._headers

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            raw = self.scope.get("query_string", b"").decode("latin-1")
            self._query = dict(parse_qsl(raw, keep_blank_values=True))
        return self._query

    async def read(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self.body = b"".join(chunks)
        return self.body


async def send_json(
    send: Send, status: int, payload: Any, headers: dict[str, str] | None = None
) -> None:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    raw = [*_JSON, (b"content-length", str(len(body)).encode())]
    if headers:
        raw.extend((k.lower().encode(), v.encode()) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def start_sse(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
            ],
        }
    )


async def drop_connection(receive: Receive) -> bool:
    """Close the client's socket without a reply; False if the server gives no way to.

    uvicorn's `receive` is a bound method of its per-request cycle, which holds the asyncio
    transport; closing it is what a crashed or overloaded upstream looks like to a client. We
    then wait for uvicorn to notice the disconnect, or it would log the missing response.
    """
    cycle = getattr(receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        return False
    transport.close()
    try:
        async with asyncio.timeout(1.0):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        pass
    return True
