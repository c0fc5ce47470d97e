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

if TYPE_CHECKING:
    from vapi_proxy.runtime import Runtime


def routes(runtime: Runtime) -> list[Route]:
    receiver = runtime.webhooks
    if receiver is None:
        return []
    max_bytes = runtime.settings.webhooks.max_body_bytes

    async def webhook(request: Request) -> Response:
        state = request_state(request.scope)
        body = await read_body(request, max_bytes)
        message, message_id = await receiver.read_verified(
            request.headers, body, state.client, state.request_id
        )
        reply = await receiver.handle(message, body, message_id, state.request_id)
        return Response(
            orjson.dumps(reply),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    return [Route(runtime.settings.webhook_path, webhook, methods=["POST"])]
