"""Call routes: `POST /call/web`, the one request the Web SDK makes.

Authenticate → read the JSON body → intake → policy → admit (limits) → Vapi → ledger → scrub.
Each step raises the refusal the client should see; the edge renders it in the one envelope.
An `Idempotency-Key` header makes a retried creation replay the first result instead of
starting a second call.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vapi_proxy.auth.identity import Identity
from vapi_proxy.edge.body import read_json
from vapi_proxy.edge.middleware import RequestState, request_state
from vapi_proxy.errors import BadRequestError, ProxyError, UpstreamError, render
from vapi_proxy.limits.base import AdmissionRequest
from vapi_proxy.policy.intake import read_web_call
from vapi_proxy.policy.reply import scrub
from vapi_proxy.policy.webcall import CallContext, PlannedCall, plan_web_call
from vapi_proxy.upstream.replies import parse_success

if TYPE_CHECKING:
    from vapi_proxy.app import Runtime

logger = logging.getLogger("vapi_proxy.calls")

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_JSON_HEADERS = {"Cache-Control": "no-store"}


async def authenticate(runtime: Runtime, request: Request) -> Identity:
    client = request.client
    return await runtime.auth.authenticate(
        request.headers.get("authorization"),
        client.host if client else "",
        request.headers,
    )


def _json(body: bytes, status: int, extra: dict[str, str] | None = None) -> Response:
    headers = {**_JSON_HEADERS, **(extra or {})}
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def start_call(
    runtime: Runtime,
    state: RequestState,
    identity: Identity,
    planned: PlannedCall,
    path: str,
    *,
    kind: str,
) -> tuple[int, dict[str, Any]]:
    """Admit, create the call at Vapi, record it; returns Vapi's status and Call object.

    The reservation is given back if Vapi provably did not create the call; when the outcome
    is unknown (a timeout after sending) it is kept, so a call that does exist stays counted
    until its slot expires or its webhooks settle it.
    """
    compiled = planned.profile
    reservation = await runtime.limiter.reserve(
        AdmissionRequest(
            identity=identity,
            profile=compiled.name,
            kind="call",
            worst_case_seconds=float(compiled.max_duration_seconds),
        )
    )
    try:
        reply = await runtime.upstream.request("POST", path, orjson.dumps(planned.body))
        state.upstream_status = reply.status
        state.upstream_ms = round(reply.elapsed_ms, 3)
        call = parse_success(reply, runtime.api_key)
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise UpstreamError("Vapi's reply had no call id.", maybe_sent=True)
    except UpstreamError as exc:
        if not exc.maybe_sent:
            await runtime.limiter.release(reservation)
        raise
    except BaseException:
        await runtime.limiter.release(reservation)
        raise
    await runtime.limiter.commit(reservation, call_id)
    try:
        await runtime.ledger.record_call(
            call_id=call_id,
            identity=identity,
            profile=compiled.name,
            kind=kind,
            request_id=state.request_id,
            status=str(call.get("status") or "queued"),
            max_duration_seconds=float(compiled.max_duration_seconds),
            reservation_id=reservation.id,
        )
    except Exception:
        # The call exists and is paid for: hand it to the caller rather than waste it. Its
        # webhooks still carry our attribution (metadata), and the limits already count it.
        logger.exception(
            "ledger write failed for a created call",
            extra={"fields": {"request_id": state.request_id, "call_id": call_id}},
        )
    return reply.status, call


def _request_hash(body: Any) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def routes(runtime: Runtime) -> list[Route]:
    settings = runtime.settings
    ignored = frozenset(settings.intake.ignored_fields)
    max_bytes = settings.server.max_body_bytes
    max_depth = settings.server.max_json_depth
    ttl = settings.idempotency.ttl_seconds

    async def create_web_call(
        state: RequestState, identity: Identity, body: Any
    ) -> tuple[int, bytes]:
        intake = read_web_call(body, ignored)
        state.profile = intake.profile if intake.profile in runtime.profiles else None
        planned = plan_web_call(
            runtime.profiles,
            intake,
            CallContext(identity, state.request_id, runtime.webhook_server),
        )
        status, call = await start_call(runtime, state, identity, planned, "/call/web", kind="web")
        visible = scrub(call, runtime.reply_paths[planned.profile.name])
        return status, orjson.dumps(visible)

    async def web_call(request: Request) -> Response:
        state = request_state(request.scope)
        identity = await authenticate(runtime, request)
        state.identity = identity.hashed
        body = await read_json(request, max_bytes=max_bytes, max_depth=max_depth)
        key = request.headers.get("idempotency-key")
        if key is None:
            status, payload = await create_web_call(state, identity, body)
            return _json(payload, status)
        if not _IDEMPOTENCY_KEY.fullmatch(key):
            raise BadRequestError("Idempotency-Key must be 1-255 visible ASCII characters.")
        claim = await runtime.ledger.idempotency_claim(
            key, identity.key, ttl_seconds=ttl, request_hash=_request_hash(body)
        )
        if claim.state == "completed" and claim.response_body is not None:
            return _json(
                claim.response_body,
                claim.response_status or 201,
                {"Idempotent-Replayed": "true"},
            )
        if claim.state == "mismatch":
            raise ProxyError(
                "This Idempotency-Key was already used with a different request.",
                status_code=422,
            )
        if claim.state != "claimed":
            raise ProxyError(
                "A request with this Idempotency-Key is still in progress; retry shortly.",
                status_code=409,
                headers={"Retry-After": "1"},
            )
        try:
            status, payload = await create_web_call(state, identity, body)
        except UpstreamError as exc:
            if exc.maybe_sent:
                # A call may exist: replay this failure rather than risk a second call.
                await runtime.ledger.idempotency_complete(
                    key, identity.key, status=exc.status_code, body=render(exc, state.request_id)
                )
            else:
                await runtime.ledger.idempotency_abandon(key, identity.key)
            raise
        except BaseException:
            await runtime.ledger.idempotency_abandon(key, identity.key)
            raise
        await runtime.ledger.idempotency_complete(key, identity.key, status=status, body=payload)
        return _json(payload, status)

    return [Route("/call/web", web_call, methods=["POST"])]
