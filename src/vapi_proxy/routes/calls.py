"""Call routes: `POST /call/web`, the one request the Web SDK makes.

Authenticate → read the JSON body → intake → policy → Vapi → scrub. Each step raises the
refusal the client should see; the edge renders it in the one envelope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vapi_proxy.auth.identity import Identity
from vapi_proxy.edge.body import read_json
from vapi_proxy.edge.middleware import request_state
from vapi_proxy.policy.intake import read_web_call
from vapi_proxy.policy.reply import scrub
from vapi_proxy.policy.webcall import CallContext, plan_web_call
from vapi_proxy.upstream.replies import parse_success

if TYPE_CHECKING:
    from vapi_proxy.app import Runtime


async def authenticate(runtime: Runtime, request: Request) -> Identity:
    client = request.client
    return await runtime.auth.authenticate(
        request.headers.get("authorization"),
        client.host if client else "",
        request.headers,
    )


def routes(runtime: Runtime) -> list[Route]:
    settings = runtime.settings
    ignored = frozenset(settings.intake.ignored_fields)
    max_bytes = settings.server.max_body_bytes
    max_depth = settings.server.max_json_depth

    async def web_call(request: Request) -> Response:
        state = request_state(request.scope)
        identity = await authenticate(runtime, request)
        state.identity = identity.hashed
        body = await read_json(request, max_bytes=max_bytes, max_depth=max_depth)
        intake = read_web_call(body, ignored)
        state.profile = intake.profile if intake.profile in runtime.profiles else None
        planned = plan_web_call(
            runtime.profiles,
            intake,
            CallContext(identity, state.request_id, runtime.webhook_server),
        )
        reply = await runtime.upstream.request("POST", "/call/web", orjson.dumps(planned.body))
        state.upstream_status = reply.status
        state.upstream_ms = round(reply.elapsed_ms, 3)
        call = parse_success(reply, runtime.api_key)
        visible = scrub(call, runtime.reply_paths[planned.profile.name])
        return Response(
            orjson.dumps(visible),
            status_code=reply.status,
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    return [Route("/call/web", web_call, methods=["POST"])]
