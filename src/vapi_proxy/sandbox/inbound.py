"""Simulated inbound phone calls: the `assistant-request` round trip of Vapi facts §4.6.

A number without an assistant makes the simulator ask the server URL; the reply (or its
absence within the 7.5 s deadline) decides whether the call starts and with what.
"""

from __future__ import annotations

from typing import Any

from . import messages
from .call_routes import new_call
from .calls import CallRecord, iso
from .state import SandboxState, uuid7
from .webhooks import pick_server, server_dict

_TARGETS = ("assistantId", "assistant", "squadId", "squad", "workflowId", "workflow")


def _failed(
    state: SandboxState,
    base: str,
    number: dict[str, Any],
    customer: dict[str, Any],
    reason: str,
    at: float,
    call_id: str | None = None,
) -> CallRecord:
    body = {"phoneNumberId": number["id"], "customer": customer}
    call = new_call(
        state,
        base,
        kind="inboundPhoneCall",
        body=body,
        assistant=None,
        phone_number=number,
        created=at,
        call_id=call_id,
    )
    call.forced_end = at
    call.forced_reason = reason
    if call.driver_wakeup is not None:
        call.driver_wakeup.set()
    return call


def _judge(
    state: SandboxState, status: int | None, reply: Any
) -> tuple[str | None, dict[str, Any]]:
    """(endedReason if the call cannot start, the body to start it with)."""
    if status is None or not 200 <= status < 300 or not isinstance(reply, dict):
        return "assistant-request-failed", {}
    if "error" in reply:
        error = reply["error"]
        if isinstance(error, str) and error.strip():
            return "assistant-request-returned-error", {}
        return "assistant-request-returned-unspeakable-error", {}
    if isinstance(reply.get("destination"), dict):
        return None, {"destination": reply["destination"]}
    start = {
        k: reply[k]
        for k in (*_TARGETS, "assistantOverrides", "squadOverrides", "workflowOverrides")
        if reply.get(k) is not None
    }
    if not any(k in start for k in _TARGETS):
        return "assistant-request-returned-no-assistant", {}
    if "assistantId" in start and state.find_assistant(str(start["assistantId"])) is None:
        return "assistant-request-returned-invalid-assistant", {}
    if "assistant" in start and (
        not isinstance(start["assistant"], dict)
        or state.validator.check("CreateAssistantDTO", start["assistant"])
    ):
        return "assistant-request-returned-invalid-assistant", {}
    return None, start


async def inbound_call(
    state: SandboxState, base: str, number: dict[str, Any], customer: dict[str, Any]
) -> CallRecord:
    """Run the inbound flow to the point where the call starts or ends; return the call."""
    now = state.clock.now()
    if number.get("assistantId"):
        saved = state.find_assistant(str(number["assistantId"]))
        body = {
            "phoneNumberId": number["id"],
            "customer": customer,
            "assistantId": number["assistantId"],
        }
        return new_call(
            state,
            base,
            kind="inboundPhoneCall",
            body=body,
            assistant=saved,
            phone_number=number,
            created=now,
        )
    server = pick_server(number.get("server"), server_dict(state.settings.server))
    if server is None:
        return _failed(
            state, base, number, customer, "call-start-error-neither-assistant-nor-server-set", now
        )
    provisional = {
        "id": uuid7(),
        "orgId": state.settings.org_id,
        "type": "inboundPhoneCall",
        "status": "ringing",
        "phoneNumberId": number["id"],
        "customer": customer,
        "createdAt": iso(now),
        "updatedAt": iso(now),
        "phoneCallProvider": "twilio",
        "phoneCallTransport": "pstn",
    }
    status, reply = await state.webhooks.deliver(
        server,
        messages.assistant_request(provisional, number, customer, now),
        deadline=state.settings.assistant_request_timeout_seconds,
    )
    reason, start = _judge(state, status, reply)
    at = state.clock.now()
    if reason is not None:
        return _failed(state, base, number, customer, reason, at, provisional["id"])
    assistant: dict[str, Any] | None = None
    if "assistantId" in start:
        assistant = state.find_assistant(str(start["assistantId"]))
    elif isinstance(start.get("assistant"), dict):
        assistant = start["assistant"]
    body = {"phoneNumberId": number["id"], "customer": customer, **start}
    call = new_call(
        state,
        base,
        kind="inboundPhoneCall",
        body=body,
        assistant=assistant,
        phone_number=number,
        created=at,
        call_id=provisional["id"],  # Vapi's assistant-request names the call that then runs
    )
    if "destination" in start:
        call.natural_reason = "assistant-request-returned-forwarding-phone-number"
    return call
