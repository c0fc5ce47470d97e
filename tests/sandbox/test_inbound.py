"""Inbound calls and the `assistant-request` round trip (API-FACTS §4.6)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.sandbox import (
    ASSISTANT_ID,
    INBOUND_NUMBER_ID,
    NUMBER_ID,
    Receiver,
    base_settings,
)
from vapi_proxy.sandbox import RunningSandbox, ServerConfig, run_sandbox
from vapi_proxy.sandbox.settings import LifecycleSettings

SLOW = LifecycleSettings(ringing_after=100, in_progress_after=100, duration=100)


@pytest.fixture(scope="module")
def slow_sim(receiver_server: tuple[Receiver, str]) -> Iterator[RunningSandbox]:
    """One simulator for the tests whose calls never progress on their own."""
    _, base = receiver_server
    with run_sandbox(base_settings(server=ServerConfig(url=base + "/hook"), lifecycle=SLOW)) as sb:
        yield sb


CUSTOMER = {"number": "+15557654321"}


def inbound(url: str, client: httpx.Client, number_id: str = INBOUND_NUMBER_ID) -> dict[str, Any]:
    resp = client.post(
        url + "/__sandbox/inbound", json={"phoneNumberId": number_id, "customer": CUSTOMER}
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def test_assistant_request_payload_and_start(
    slow_sim: RunningSandbox, receiver: tuple[Receiver, str], client: httpx.Client
) -> None:
    rec, _ = receiver
    rec.replies["assistant-request"] = {
        "assistantId": ASSISTANT_ID,
        "assistantOverrides": {"variableValues": {"v": 1}},
    }
    call = inbound(slow_sim.url, client)
    request = rec.received[0]["body"]["message"]
    assert request["type"] == "assistant-request"
    assert request["phoneNumber"]["id"] == INBOUND_NUMBER_ID
    assert request["customer"] == CUSTOMER
    assert request["call"]["type"] == "inboundPhoneCall"
    assert isinstance(request["timestamp"], int)
    assert call["type"] == "inboundPhoneCall"
    assert call["status"] == "queued"
    assert call["assistantId"] == ASSISTANT_ID
    assert call["assistantOverrides"] == {"variableValues": {"v": 1}}
    assert call["customer"] == CUSTOMER


@pytest.mark.parametrize(
    ("reply", "status", "reason"),
    [
        ({"error": "Sorry, we are closed."}, 200, "assistant-request-returned-error"),
        ({"error": ""}, 200, "assistant-request-returned-unspeakable-error"),
        ({}, 200, "assistant-request-returned-no-assistant"),
        ({"assistantId": "no-such-assistant"}, 200, "assistant-request-returned-invalid-assistant"),
        (
            {"assistant": {"name": "x", "bogus": True}},
            200,
            "assistant-request-returned-invalid-assistant",
        ),
        ({"assistantId": ASSISTANT_ID}, 500, "assistant-request-failed"),
    ],
)
def test_assistant_request_failures(
    slow_sim: RunningSandbox,
    receiver: tuple[Receiver, str],
    client: httpx.Client,
    reply: dict[str, Any],
    status: int,
    reason: str,
) -> None:
    rec, _ = receiver
    rec.replies["assistant-request"] = reply
    rec.status = status
    call = inbound(slow_sim.url, client)
    # The failed call is still reported (to the same server), even when it answers 500.
    rec.wait_for(3)
    assert call["status"] == "ended"
    assert call["endedReason"] == reason
    assert rec.types() == ["assistant-request", "status-update", "end-of-call-report"]
    assert rec.received[2]["body"]["message"]["endedReason"] == reason


def test_deadline(receiver: tuple[Receiver, str], client: httpx.Client) -> None:
    rec, url = receiver
    rec.replies["assistant-request"] = {"assistantId": ASSISTANT_ID}
    rec.delay["assistant-request"] = 0.8
    # Vapi's deadline is a fixed 7.5 s; the setting shortens it so the test stays fast.
    settings = base_settings(
        server=ServerConfig(url=url), lifecycle=SLOW, assistant_request_timeout_seconds=0.3
    )
    with run_sandbox(settings) as sb:
        call = inbound(sb.url, client)
        log = client.get(sb.url + "/__sandbox/webhooks").json()
    assert call["endedReason"] == "assistant-request-failed"
    assert log[0]["error"] == "timeout after 0.3s"


def test_transient_assistant_reply(
    slow_sim: RunningSandbox, receiver: tuple[Receiver, str], client: httpx.Client
) -> None:
    rec, _ = receiver
    rec.replies["assistant-request"] = {"assistant": {"name": "From hook", "firstMessage": "Yo"}}
    call = inbound(slow_sim.url, client)
    assert call["assistant"] == {"name": "From hook", "firstMessage": "Yo"}
    assert "endedReason" not in call


def test_destination_reply_forwards(receiver: tuple[Receiver, str], client: httpx.Client) -> None:
    rec, url = receiver
    destination = {"type": "number", "number": "+15559990000", "message": ""}
    rec.replies["assistant-request"] = {"destination": destination}
    lifecycle = LifecycleSettings(ringing_after=0, in_progress_after=0, duration=0)
    with run_sandbox(base_settings(server=ServerConfig(url=url), lifecycle=lifecycle)) as sb:
        call = inbound(sb.url, client)
        rec.wait_for(3)
    assert call["destination"] == destination
    assert rec.received[-1]["body"]["message"]["endedReason"] == (
        "assistant-request-returned-forwarding-phone-number"
    )


def test_no_server_set(client: httpx.Client) -> None:
    with run_sandbox(base_settings()) as sb:
        call = inbound(sb.url, client)
    assert call["endedReason"] == "call-start-error-neither-assistant-nor-server-set"


def test_number_with_assistant_skips_the_request(
    slow_sim: RunningSandbox, receiver: tuple[Receiver, str], client: httpx.Client
) -> None:
    rec, _ = receiver
    call = inbound(slow_sim.url, client, NUMBER_ID)
    assert call["assistantId"] == ASSISTANT_ID
    assert "assistant-request" not in rec.types()


def test_unknown_number_is_404(sim: Any, client: httpx.Client) -> None:
    resp = client.post(sim.url + "/__sandbox/inbound", json={"phoneNumberId": "nope"})
    assert resp.status_code == 404
