"""Inbound calls end to end: the simulator's `assistant-request` answered by the proxy's rules
and policy, the caller's limits, the ledger, and the deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from tests.support.app_stub import AppStub
from tests.support.proxy import SAVED_ASSISTANT_ID
from tests.support.webhooks import (
    INBOUND_NUMBER_ID,
    HookProxyFactory,
    Keys,
    on_server,
    runtime,
    wait_for,
)
from vapi_proxy.sandbox import ManualClock, RunningSandbox
from vapi_proxy.testing import ServerThread
from vapi_proxy.webhooks.forward import verify_signature


def inbound(sandbox: RunningSandbox, caller: str) -> dict[str, Any]:
    reply = httpx.post(
        sandbox.url + "/__sandbox/inbound",
        json={"phoneNumberId": INBOUND_NUMBER_ID, "customer": {"number": caller}},
        timeout=15,
    )
    assert reply.status_code == 201, reply.text
    call: dict[str, Any] = reply.json()
    return call


def assistant_request_reply(sandbox: RunningSandbox, call_id: str | None = None) -> Any:
    log = httpx.get(sandbox.url + "/__sandbox/webhooks", timeout=5).json()
    asked = [e for e in log if e["type"] == "assistant-request"]
    return asked[-1]


def rules(extra: dict[str, Any] | None = None) -> Any:
    def patch(config: dict[str, Any]) -> None:
        config["webhooks"]["inbound"] = {
            "deny_numbers": ["+15550666"],
            "rules": [
                {
                    "name": "after-hours-line",
                    "match": {"caller_prefixes": ["+4420"]},
                    "destination": {"type": "number", "number": "+15550123"},
                },
            ],
            "default": {"profile": "sales-coach", "tenant": "phone-line"},
            **(extra or {}),
        }
        config["limits"] = {
            "backend": "memory://",
            "rules": [
                {"name": "phone", "match": {"methods": ["phone"]}, "concurrency": 1},
            ],
        }

    return patch


def test_an_inbound_call_is_answered_recorded_and_settled(
    make_hook_proxy: HookProxyFactory, hook_sandbox: RunningSandbox, clock: ManualClock
) -> None:
    proxy = make_hook_proxy("hmac", rules(), org_server=True)
    call = inbound(hook_sandbox, "+15551234")
    assert call.get("endedReason") is None
    assert call["assistantId"] == SAVED_ASSISTANT_ID
    overrides = call["assistantOverrides"]
    assert overrides["maxDurationSeconds"] == 600
    assert overrides["variableValues"]["callerNumber"] == "+15551234"
    assert overrides["variableValues"]["caller"] == "+15551234"  # {{identity.sub}}
    assert overrides["metadata"]["vapiProxy"]["profile"] == "sales-coach"
    assert overrides["server"] == {"url": proxy.url + "/webhook", "credentialId": "hmac"}
    record = on_server(proxy, runtime(proxy).ledger.get_call(call["id"]))
    assert (record.kind, record.identity_key, record.tenant) == (
        "inbound",
        "phone:+15551234",
        "phone-line",
    )
    clock.advance(40)

    def ended() -> Any:
        rec = on_server(proxy, runtime(proxy).ledger.get_call(call["id"]))
        return rec if rec.status == "ended" and rec.cost_usd is not None else None

    assert wait_for(ended).ended_reason == "customer-ended-call"
    assert runtime(proxy).webhook_stats.assistant_requests["profile"] == 1


def test_denied_callers_transfers_and_limits(
    make_hook_proxy: HookProxyFactory, hook_sandbox: RunningSandbox
) -> None:
    proxy = make_hook_proxy("hmac", rules(), org_server=True)
    denied = inbound(hook_sandbox, "+15550666")
    assert denied["endedReason"] == "assistant-request-returned-error"
    assert assistant_request_reply(hook_sandbox)["response"] == {
        "error": "Sorry, this number cannot take your call."
    }
    transferred = inbound(hook_sandbox, "+442079460000")
    assert transferred["destination"] == {"type": "number", "number": "+15550123"}
    first = inbound(hook_sandbox, "+15557777")
    assert first.get("endedReason") is None
    second = inbound(hook_sandbox, "+15557777")  # the same caller, still on the line
    assert second["endedReason"] == "assistant-request-returned-error"
    assert "limit" in assistant_request_reply(hook_sandbox)["response"]["error"]
    other = inbound(hook_sandbox, "+15558888")
    assert other.get("endedReason") is None
    counts = runtime(proxy).webhook_stats.assistant_requests
    assert (counts["denied"], counts["destination"], counts["limited"], counts["profile"]) == (
        1,
        1,
        1,
        2,
    )


@dataclass
class HeldApp(AppStub):
    """The app's server, holding each answer until the test opens `gate`: an app slower than
    any deadline, without a sleep whose length the test would have to guess."""

    gate: threading.Event = field(default_factory=threading.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def reply_when_let(message: Message) -> None:
            if message["type"] == "http.response.start":
                # The request is read and recorded by now. Hang guard only: a test that
                # never opens the gate still ends.
                await asyncio.to_thread(self.gate.wait, HANG_GUARD)
            await send(message)

        await super().__call__(scope, receive, reply_when_let)


HANG_GUARD = 30.0


@pytest.fixture
def slow_app() -> Iterator[HeldApp]:
    stub = HeldApp(reply={"assistantId": SAVED_ASSISTANT_ID})
    with ServerThread(stub, lifespan="off") as server:
        stub.url = server.url  # type: ignore[attr-defined]
        try:
            yield stub
        finally:
            stub.gate.set()  # let a held request finish so the server stops at once


def test_a_slow_app_gets_the_spoken_error_within_the_deadline(
    make_hook_proxy: HookProxyFactory,
    hook_sandbox: RunningSandbox,
    slow_app: HeldApp,
    app_secret: str,
) -> None:
    def patch(config: dict[str, Any]) -> None:
        rules({"deadline_seconds": 0.5, "error_message": "Please call back later."})(config)
        config["webhooks"]["inbound"]["default"] = {"forward": True}
        config["webhooks"]["respond"] = {"url": slow_app.url + "/vapi"}  # type: ignore[attr-defined]
        config["webhooks"]["forward"] = {"secret_file": app_secret}

    make_hook_proxy("hmac", patch, org_server=True)
    # The app holds its answer for as long as the test wants: whatever Vapi heard, it heard
    # without the app's answer, so it came from the proxy's own deadline.
    call = inbound(hook_sandbox, "+15559999")
    assert slow_app.answered == 0
    assert call["endedReason"] == "assistant-request-returned-error"
    asked = assistant_request_reply(hook_sandbox)
    # Vapi got the spoken error as the proxy's answer, not its own "no answer in time"
    # (assistant-request-failed, `error: timeout after 7.5s`): the proxy's deadline is earlier.
    assert asked["error"] is None and asked["responseStatus"] == 200
    assert asked["response"] == {"error": "Please call back later."}
    assert len(slow_app.received) == 1  # it was asked, it was just too slow
    assert hook_sandbox.settings.assistant_request_timeout_seconds > 0.5


def test_a_fast_app_answers_through_the_proxy(
    make_hook_proxy: HookProxyFactory,
    hook_sandbox: RunningSandbox,
    slow_app: HeldApp,
    app_secret: str,
    keys: Keys,
) -> None:
    slow_app.gate.set()  # this app answers at once

    def patch(config: dict[str, Any]) -> None:
        rules()(config)
        config["webhooks"]["inbound"]["default"] = {"forward": True}
        config["webhooks"]["respond"] = {"url": slow_app.url + "/vapi"}  # type: ignore[attr-defined]
        config["webhooks"]["forward"] = {"secret_file": app_secret}

    make_hook_proxy("hmac", patch, org_server=True)
    call = inbound(hook_sandbox, "+15559998")
    assert call.get("endedReason") is None
    assert call["assistantId"] == SAVED_ASSISTANT_ID
    forwarded = slow_app.received[0]
    assert forwarded["headers"]["x-vapi-proxy-event-type"] == "assistant-request"
    header = forwarded["headers"]["x-vapi-proxy-signature"]
    assert verify_signature([keys.app.encode()], header, forwarded["body"], now=time.time())
