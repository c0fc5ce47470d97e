"""Webhook route: `POST {webhook_path}`, where Vapi delivers its server messages.

Thin: read the raw body within `webhooks.max_body_bytes`, hand it to the receiver
(webhooks/receiver.py), answer its JSON. Refusals (401 credential, 400 body, 413 size) are
`ProxyError`s the edge renders in the one envelope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vapi_proxy.edge.body import read_body
from vapi_proxy.edge.middleware import request_state
from vapi_proxy.routes.common import json_response

if TYPE_CHECKING:
    from vapi_proxy.runtime import Runtime
    from vapi_proxy.webhooks.receiver import WebhookReceiver


class WebhookRoute:
    """`POST {webhook_path}` into one `WebhookReceiver`."""

    def __init__(self, receiver: WebhookReceiver, max_bytes: int) -> None:
        self.receiver = receiver
        self.max_bytes = max_bytes

    async def webhook(self, request: Request) -> Response:
        state = request_state(request.scope)
        body = await read_body(request, self.max_bytes)
        message, message_id = await self.receiver.read_verified(
            request.headers, body, state.client, state.request_id
        )
        reply = await self.receiver.handle(message, body, message_id, state.request_id)
        return json_response(orjson.dumps(reply))


def routes(runtime: Runtime) -> list[Route]:
    if runtime.webhooks is None:
        return []
    route = WebhookRoute(runtime.webhooks, runtime.settings.webhooks.max_body_bytes)
    return [Route(runtime.settings.webhook_path, route.webhook, methods=["POST"])]
