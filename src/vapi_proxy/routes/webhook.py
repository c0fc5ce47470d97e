"""Webhook route: `POST {webhook_path}`, where Vapi delivers its server messages.

Thin: read the raw body within `webhooks.max_body_bytes`, hand it to the receiver
(webhooks/receiver.py), answer its JSON. Refusals (401 credential, 400 body, 413 size) are
`ProxyError`s the edge renders in the one envelope.

A plain ASGI app rather than a Starlette endpoint: every delivery of every call comes here, and
Starlette's request/response wrappers (its exception handling, `Response` objects) cost more
than the rest of the route does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from vapi_proxy.edge.body import read_body
from vapi_proxy.edge.middleware import plain_headers, request_state

if TYPE_CHECKING:
    from vapi_proxy.runtime import Runtime
    from vapi_proxy.webhooks.receiver import WebhookReceiver

_JSON_NO_STORE = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"))


class WebhookRoute:
    """`POST {webhook_path}` into one `WebhookReceiver`, as an ASGI app."""

    def __init__(self, receiver: WebhookReceiver, max_bytes: int) -> None:
        self.receiver = receiver
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = request_state(scope)
        body = await read_body(Request(scope, receive), self.max_bytes)
        message, message_id = await self.receiver.read_verified(
            plain_headers(scope), body, state.client, state.request_id
        )
        reply = orjson.dumps(
            await self.receiver.handle(message, body, message_id, state.request_id)
        )
        headers = [*_JSON_NO_STORE, (b"content-length", str(len(reply)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})


def routes(runtime: Runtime) -> list[Route]:
    if runtime.webhooks is None:
        return []
    route = WebhookRoute(runtime.webhooks, runtime.settings.webhooks.max_body_bytes)
    return [Route(runtime.settings.webhook_path, route, methods=["POST"])]
