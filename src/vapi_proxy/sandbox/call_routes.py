"""Call endpoints: `POST /call/web`, `POST /call` (phone, batch), `GET /call[/{id}]`, live
control at `POST /{id}/control`, and the call factory the inbound simulation reuses.
"""

from __future__ import annotations

import base64
import operator
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from .auth import check_restrictions, require_private
from .calls import DEFAULT_MAX_DURATION, CallRecord, iso, plan_timeline
from .errors import VapiError, not_found
from .handlers import Context, Reply, query_limit, validate
from .state import SandboxState, uuid7
from .webhooks import pick_server, server_dict

# Vapi facts §2.2: the known tail of Vapi's message; the head is not recorded anywhere, so this
# prefix is the simulator's guess.
NO_ASSISTANT = (
    "Couldn't Get Assistant. Need Either `workflow`, `workflowId`, "
    "`assistant`, `assistantId`, `squad`, Or `squadId`."
)
_TARGETS = ("assistant", "assistantId", "squad", "squadId", "workflow", "workflowId")
_ECHO = (
    "assistantId",
    "assistant",
    "assistantOverrides",
    "assistantVersion",
    "squadId",
    "squad",
    "squadOverrides",
    "workflowId",
    "workflow",
    "workflowOverrides",
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_TOKEN_HEAD = _b64(b'{"alg":"HS256","typ":"JWT"}')


def _daily_token(room: str, exp: float, noise: bytes) -> str:
    # A Daily meeting token is an HS256 JWT; this one has the shape but no valid signature.
    body = _b64(orjson.dumps({"r": room, "o": False, "exp": int(exp), "d": "vapi-sandbox"}))
    return f"{_TOKEN_HEAD}.{body}.{_b64(noise)}"


def resolve_target(state: SandboxState, body: dict[str, Any]) -> dict[str, Any] | None:
    """The assistant config the call runs (saved or transient), None for squads/workflows.

    An unknown `assistantId` is a 400 like Vapi's other missing resources on `POST /call`
    (Vapi facts §2.3: "400 Client/policy failure (... missing resources)").
    """
    if not any(body.get(k) is not None for k in _TARGETS):
        raise VapiError(400, NO_ASSISTANT)
    assistant_id = body.get("assistantId")
    if assistant_id is not None:
        found = state.find_assistant(str(assistant_id))
        if found is None:
            raise VapiError(400, f"Couldn't Get Assistant. `assistantId` {assistant_id} Not Found.")
        return found
    transient = body.get("assistant")
    return transient if isinstance(transient, dict) else None


def _effective(assistant: dict[str, Any] | None, *overrides: Any) -> dict[str, Any]:
    merged = dict(assistant or {})
    for override in overrides:
        if isinstance(override, dict):
            merged.update({k: v for k, v in override.items() if k != "variableValues"})
    return merged


def new_call(
    state: SandboxState,
    ctx_base: str,
    *,
    kind: str,
    body: dict[str, Any],
    assistant: dict[str, Any] | None,
    extra_overrides: Any = None,
    phone_number: dict[str, Any] | None = None,
    created: float | None = None,
    call_id: str | None = None,
) -> CallRecord:
    """Create, store and start driving a call; `ctx_base` is this simulator's base URL.
    `call_id`: keep an id already announced (an inbound call's assistant-request)."""
    settings = state.settings
    now = state.clock.now() if created is None else created
    call_id = call_id or uuid7()
    stamp = iso(now)
    merged = _effective(assistant, body.get("assistantOverrides"), extra_overrides)
    max_duration = float(merged.get("maxDurationSeconds") or DEFAULT_MAX_DURATION)
    timeline, end_at, reason = plan_timeline(
        now, settings.lifecycle, phone=kind != "webCall", max_duration=max_duration
    )
    host = ctx_base.split("://", 1)[-1]
    base: dict[str, Any] = {
        "id": call_id,
        "orgId": settings.org_id,
        "createdAt": stamp,
        "updatedAt": stamp,
        "type": kind,
        "status": "queued",
        "cost": 0,
        "monitor": {
            # Not served: the simulator has no audio. The shape is Vapi's (Vapi facts §2.2).
            "listenUrl": f"wss://{host}/{call_id}/listen",
            "controlUrl": f"{ctx_base}/{call_id}/control",
        },
    }
    for key in _ECHO:
        if body.get(key) is not None:
            base[key] = body[key]
    if kind == "webCall":
        noise = os.urandom(42)  # one syscall for the room name and the token's signature
        room = noise[:10].hex()
        room_url = f"https://vapi.daily.co/{room}"
        video = bool((merged.get("artifactPlan") or {}).get("videoRecordingEnabled", False))
        base["transport"] = {
            "conversationType": "voice",
            "provider": "daily",
            "videoRecordingEnabled": video,
            "assistantVideoEnabled": False,
            "roomDeleteOnUserLeaveEnabled": body.get("roomDeleteOnUserLeaveEnabled", True),
            "callUrl": room_url,
            "callToken": _daily_token(room, now + 3600, noise[10:]),
        }
        base["webCallUrl"] = room_url
        base["artifactPlan"] = {
            "recordingEnabled": True,
            "recordingFormat": "wav;l16",
            "videoRecordingEnabled": video,
            "loggingEnabled": True,
            "pcapEnabled": True,
        }
    else:
        base["phoneCallProvider"] = "twilio"
        base["phoneCallTransport"] = "pstn"
        base["phoneCallProviderId"] = "CA" + os.urandom(16).hex()
        for key in (
            "phoneNumberId",
            "customer",
            "customerId",
            "name",
            "schedulePlan",
            "destination",
        ):
            if body.get(key) is not None:
                base[key] = body[key]
    number_server = (phone_number or {}).get("server")
    server = pick_server(
        (extra_overrides or {}).get("server") if isinstance(extra_overrides, dict) else None,
        (body.get("assistantOverrides") or {}).get("server"),
        (assistant or {}).get("server"),
        number_server,
        server_dict(settings.server),
    )
    call = CallRecord(
        id=call_id,
        created=now,
        snapshot=orjson.dumps(base),
        timeline=timeline,
        natural_end=end_at,
        natural_reason=reason,
        cost_per_minute=settings.cost_per_minute,
        assistant_id=body.get("assistantId"),
        phone_number_id=body.get("phoneNumberId"),
        customer=body.get("customer"),
        assistant=assistant,
        phone_number=phone_number,
        server=server,
    )
    state.calls.add(call)
    state.webhooks.drive(call)
    return call


def base_url(ctx: Context) -> str:
    configured = ctx.state.settings.public_url
    if configured:
        return configured.rstrip("/")
    scheme = ctx.request.scope.get("scheme", "http")
    host = ctx.request.header(b"host") or "127.0.0.1"
    return f"{scheme}://{host}"


async def create_web_call(ctx: Context) -> Reply:
    body = validate(ctx, "CreateWebCallDTO")
    if ctx.caller is not None:
        check_restrictions(ctx.caller, ctx.request.header(b"origin"), body)
    assistant = resolve_target(ctx.state, body)
    call = new_call(ctx.state, base_url(ctx), kind="webCall", body=body, assistant=assistant)
    if call.status_at(call.created) == "queued":
        return 201, call.snapshot  # already the reply: skip a decode and re-encode
    return 201, call.view(call.created)


def _subscription_limits() -> dict[str, Any]:
    # Vapi's default: 10 concurrent call slots (Vapi facts §2.10); the sandbox never blocks.
    return {"concurrencyBlocked": False, "concurrencyLimit": 10, "remainingConcurrentCalls": 10}


async def create_call(ctx: Context) -> Reply:
    """`POST /call`: a phone call to `customer`, or a batch to `customers[]`."""
    if ctx.caller is not None:
        require_private(ctx.caller)
    body = validate(ctx, "CreateCallDTO")
    state = ctx.state
    assistant = resolve_target(state, body)
    number_id = body.get("phoneNumberId")
    phone_number = state.phone_numbers.get(str(number_id)) if number_id is not None else None
    if number_id is not None and phone_number is None:
        raise VapiError(400, f"Couldn't Get Phone Number. `phoneNumberId` {number_id} Not Found.")
    if phone_number is None and body.get("phoneNumber") is None:
        raise VapiError(400, "Need Either `phoneNumberId` Or `phoneNumber`.")
    customers = body.get("customers")
    base = base_url(ctx)
    if customers is None:
        if body.get("customer") is None and body.get("customerId") is None:
            raise VapiError(400, "Need Either `customer`, `customerId`, Or `customers`.")
        overrides = (body.get("customer") or {}).get("assistantOverrides")
        call = new_call(
            state,
            base,
            kind="outboundPhoneCall",
            body=body,
            assistant=assistant,
            extra_overrides=overrides,
            phone_number=phone_number,
        )
        view = call.view(call.created)
        view["subscriptionLimits"] = _subscription_limits()
        return 201, view
    results = []
    for customer in customers:
        one = {**body, "customer": customer}
        one.pop("customers", None)
        call = new_call(
            state,
            base,
            kind="outboundPhoneCall",
            body=one,
            assistant=assistant,
            extra_overrides=customer.get("assistantOverrides"),
            phone_number=phone_number,
        )
        results.append(call.view(call.created))
    return 201, {
        "results": results,
        "errors": [],
        "subscriptionLimits": _subscription_limits(),
    }


async def get_call(ctx: Context) -> Reply:
    if ctx.caller is not None:
        require_private(ctx.caller)
    call = ctx.state.calls.get(ctx.params["id"])
    if call is None:
        raise not_found("Call")
    return 200, call.view(ctx.state.clock.now())


_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "createdAtGt": operator.gt,
    "createdAtLt": operator.lt,
    "createdAtGe": operator.ge,
    "createdAtLe": operator.le,
}


def _created_bounds(query: dict[str, str]) -> list[tuple[Callable[[float, float], bool], float]]:
    """`createdAtGt|Lt|Ge|Le` filters as (comparison, epoch seconds); 400 on a bad date."""
    bounds = []
    for name, test in _COMPARISONS.items():
        if name in query:
            try:
                edge = datetime.fromisoformat(query[name].replace("Z", "+00:00"))
            except ValueError:
                raise VapiError(400, [f"{name} must be a valid ISO 8601 date string"]) from None
            if edge.tzinfo is None:
                edge = edge.replace(tzinfo=UTC)
            bounds.append((test, edge.timestamp()))
    return bounds


async def list_calls(ctx: Context) -> Reply:
    """`GET /call`: a plain array, newest first (Vapi facts §2.4)."""
    if ctx.caller is not None:
        require_private(ctx.caller)
    limit = query_limit(ctx)
    query = ctx.request.query
    now = ctx.state.clock.now()
    bounds = _created_bounds(query)
    out: list[dict[str, Any]] = []
    for call in ctx.state.calls.newest_first():
        if len(out) >= limit:
            break
        if bounds and not all(test(call.created, edge) for test, edge in bounds):
            continue
        if "id" in query and call.id != query["id"]:
            continue
        if "assistantId" in query and call.assistant_id != query["assistantId"]:
            continue
        if "phoneNumberId" in query and call.phone_number_id != query["phoneNumberId"]:
            continue
        out.append(call.view(now))
    return 200, out


def end_call(state: SandboxState, call: CallRecord, reason: str) -> None:
    """End a live call now; its webhook driver (if any) is woken to report it."""
    now = state.clock.now()
    if call.status_at(now) == "ended":
        return
    call.forced_end = now
    call.forced_reason = reason
    if call.driver_wakeup is not None:
        call.driver_wakeup.set()


async def control(ctx: Context) -> Reply:
    """`POST <monitor.controlUrl>`: unauthenticated by default, like Vapi's (Vapi facts §2.6)."""
    call = ctx.state.calls.get(ctx.params["id"])
    if call is None:
        raise not_found("Call")
    kind = ctx.json.get("type")
    if kind not in ("say", "add-message", "control", "end-call", "transfer"):
        raise VapiError(
            400,
            [
                "type must be one of the following values: say, add-message, "
                "control, end-call, transfer"
            ],
        )
    if kind == "end-call":
        end_call(ctx.state, call, "assistant-ended-call")
    return 200, {"status": "ok"}
