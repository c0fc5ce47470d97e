"""The `/__sandbox/*` admin API for tests and demos; 404 unless `admin_enabled`.

Inspect what the simulator received and sent, end calls, simulate inbound calls and manage
injected faults. Unauthenticated on purpose: it is a test fixture, bound to loopback.
"""

from __future__ import annotations

from pydantic import ValidationError

from .call_routes import base_url, end_call
from .errors import VapiError, not_found
from .handlers import Context, Reply
from .inbound import inbound_call
from .settings import FaultSpec


async def list_requests(ctx: Context) -> Reply:
    return 200, ctx.state.requests.entries()


async def clear_requests(ctx: Context) -> Reply:
    ctx.state.requests.clear()
    return 200, {"cleared": True}


async def list_webhooks(ctx: Context) -> Reply:
    return 200, list(ctx.state.webhooks.log)


async def clear_webhooks(ctx: Context) -> Reply:
    ctx.state.webhooks.log.clear()
    return 200, {"cleared": True}


async def list_calls(ctx: Context) -> Reply:
    now = ctx.state.clock.now()
    return 200, [c.view(now) for c in ctx.state.calls.newest_first()]


async def end(ctx: Context) -> Reply:
    call = ctx.state.calls.get(ctx.params["id"])
    if call is None:
        raise not_found("Call")
    reason = ctx.json.get("endedReason") or "customer-ended-call"
    end_call(ctx.state, call, str(reason))
    return 200, call.view(ctx.state.clock.now())


async def inbound(ctx: Context) -> Reply:
    number_id = ctx.json.get("phoneNumberId")
    number = ctx.state.phone_numbers.get(str(number_id))
    if number is None:
        raise not_found("Phone number")
    customer = ctx.json.get("customer") or {"number": "+15550000000"}
    if not isinstance(customer, dict):
        raise VapiError(400, ["customer must be an object"])
    call = await inbound_call(ctx.state, base_url(ctx), number, customer)
    return 201, call.view(ctx.state.clock.now())


async def list_faults(ctx: Context) -> Reply:
    return 200, ctx.state.faults.listing()


async def add_fault(ctx: Context) -> Reply:
    try:
        spec = FaultSpec.model_validate(ctx.body)
    except ValidationError as exc:
        raise VapiError(
            400, [f"{'.'.join(map(str, e['loc']))} {e['msg']}" for e in exc.errors()]
        ) from None
    ctx.state.faults.add(spec)
    return 201, ctx.state.faults.listing()


async def clear_faults(ctx: Context) -> Reply:
    ctx.state.faults.clear()
    return 200, []
