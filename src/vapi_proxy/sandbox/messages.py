"""Bodies of the server messages the simulator sends (Vapi facts §4.5-4.6), built from a call.

Every message is `{"message": {...}}` with `type`, `timestamp` (ms), the `call` object and,
when known, `assistant`, `customer` and `phoneNumber`, so a receiver can attribute it.
"""

from __future__ import annotations

from typing import Any

from .calls import CallRecord, iso


def _common(kind: str, call: CallRecord, at: float) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": kind, "timestamp": int(at * 1000), "call": call.view(at)}
    if call.assistant is not None:
        msg["assistant"] = call.assistant
    if call.customer is not None:
        msg["customer"] = call.customer
    if call.phone_number is not None:
        msg["phoneNumber"] = call.phone_number
    return msg


def status_update(call: CallRecord, status: str, reason: str | None, at: float) -> dict[str, Any]:
    msg = _common("status-update", call, at)
    msg["status"] = status
    if reason is not None:
        msg["endedReason"] = reason
    return {"message": msg}


def _conversation(call: CallRecord) -> list[tuple[str, str]]:
    assistant = call.assistant or {}
    first = assistant.get("firstMessage") or "Hello, this is the Vapi sandbox assistant."
    return [
        ("assistant", str(first)),
        ("user", "Hi, I am a simulated customer."),
        ("assistant", "Thanks for calling the sandbox. Goodbye."),
    ]


def end_of_call_report(call: CallRecord, at: float) -> dict[str, Any]:
    end_at, reason = call.end
    started = call.started_at()
    turns = _conversation(call) if started is not None else []
    base_s = started or end_at
    messages = [
        {
            "role": "bot" if role == "assistant" else "user",
            "message": text,
            "time": int((base_s + i) * 1000),
            "secondsFromStart": i,
        }
        for i, (role, text) in enumerate(turns)
    ]
    transcript = "\n".join(f"{'AI' if r == 'assistant' else 'User'}: {t}" for r, t in turns)
    msg = _common("end-of-call-report", call, at)
    msg.update(
        {
            "endedReason": reason,
            "cost": call.cost(),
            "costBreakdown": call.cost_breakdown(),
            "endedAt": iso(end_at),
            "artifact": {
                "transcript": transcript,
                "messages": messages,
                "messagesOpenAIFormatted": [{"role": r, "content": t} for r, t in turns],
            },
            "analysis": {
                "summary": f"Simulated call {call.id} ended: {reason}.",
                "successEvaluation": "true" if started is not None else "false",
            },
        }
    )
    if started is not None:
        msg["startedAt"] = iso(started)
    return {"message": msg}


def assistant_request(
    call: dict[str, Any], phone_number: dict[str, Any], customer: dict[str, Any], at: float
) -> dict[str, Any]:
    return {
        "message": {
            "type": "assistant-request",
            "timestamp": int(at * 1000),
            "call": call,
            "phoneNumber": phone_number,
            "customer": customer,
        }
    }
