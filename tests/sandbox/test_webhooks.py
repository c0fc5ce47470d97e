"""Webhooks the simulator sends (API-FACTS §4): order, payloads, precedence, authentication."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.support.sandbox import (
    ASSISTANT_ID,
    NUMBER_ID,
    Receiver,
    base_settings,
    private,
    public,
    wait_until,
)
from vapi_proxy.sandbox import (
    BearerCredential,
    HmacCredential,
    ManualClock,
    RunningSandbox,
    SeededAssistant,
    SeededPhoneNumber,
    ServerConfig,
    run_sandbox,
)
from vapi_proxy.sandbox.settings import LifecycleSettings

LIFECYCLE = LifecycleSettings(ringing_after=1, in_progress_after=2, duration=10)


def phone_call(sb: RunningSandbox, client: httpx.Client, **extra: Any) -> dict[str, Any]:
    body = {
        "assistantId": ASSISTANT_ID,
        "phoneNumberId": NUMBER_ID,
        "customer": {"number": "+15551234567"},
        **extra,
    }
    resp = client.post(sb.url + "/call", json=body, headers=private(sb))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def test_lifecycle_order_and_report(receiver: tuple[Receiver, str], client: httpx.Client) -> None:
    rec, url = receiver
    clock = ManualClock()
    settings = base_settings(server=ServerConfig(url=url), lifecycle=LIFECYCLE, cost_per_minute=0.6)
    with run_sandbox(settings, clock=clock) as sb:
        call = phone_call(sb, client, assistantOverrides={"variableValues": {"user": "u1"}})
        assert sb.state.webhooks.running == 1  # one driver, for the call with a server URL
        clock.advance(1)
        rec.wait_for(1)
        clock.advance(1)
        rec.wait_for(2)
        clock.advance(10)
        rec.wait_for(4)
    assert rec.types() == ["status-update"] * 3 + ["end-of-call-report"]
    statuses = [r["body"]["message"]["status"] for r in rec.received[:3]]
    assert statuses == ["ringing", "in-progress", "ended"]
    assert rec.received[2]["body"]["message"]["endedReason"] == "customer-ended-call"
    report = rec.received[3]["body"]["message"]
    assert report["endedReason"] == "customer-ended-call"
    assert report["call"]["id"] == call["id"]
    assert report["call"]["assistantOverrides"] == {"variableValues": {"user": "u1"}}
    assert report["cost"] == pytest.approx(0.1)  # 10 s at 0.6 USD/min
    assert report["costBreakdown"]["total"] == report["cost"]
    assert report["startedAt"] < report["endedAt"]
    assert report["artifact"]["transcript"].startswith("AI: Hi there")
    assert report["artifact"]["messages"]
    assert report["analysis"]["summary"]
    assert report["customer"] == {"number": "+15551234567"}
    assert report["phoneNumber"]["id"] == NUMBER_ID


def test_early_end_via_admin(receiver: tuple[Receiver, str], client: httpx.Client) -> None:
    rec, url = receiver
    clock = ManualClock()
    with run_sandbox(
        base_settings(server=ServerConfig(url=url), lifecycle=LIFECYCLE), clock=clock
    ) as sb:
        call = client.post(
            sb.url + "/call/web", json={"assistantId": ASSISTANT_ID}, headers=public(sb)
        ).json()
        clock.advance(2)
        rec.wait_for(1)
        ended = client.post(
            f"{sb.url}/__sandbox/calls/{call['id']}/end",
            json={"endedReason": "customer-did-not-give-microphone-permission"},
        )
        assert ended.json()["status"] == "ended"
        rec.wait_for(3)
    assert [r["body"]["message"].get("status") for r in rec.received] == [
        "in-progress",
        "ended",
        None,
    ]
    assert rec.received[2]["body"]["message"]["endedReason"] == (
        "customer-did-not-give-microphone-permission"
    )


def test_max_duration_in_report(receiver: tuple[Receiver, str], client: httpx.Client) -> None:
    rec, url = receiver
    clock = ManualClock()
    lifecycle = LifecycleSettings(in_progress_after=0, duration=100)
    with run_sandbox(
        base_settings(server=ServerConfig(url=url), lifecycle=lifecycle), clock=clock
    ) as sb:
        phone_call(sb, client, assistantOverrides={"maxDurationSeconds": 15})
        rec.wait_for(1)
        clock.advance(15)
        rec.wait_for(4)
    assert rec.received[-1]["body"]["message"]["endedReason"] == "exceeded-max-duration"


def test_no_server_means_no_deliveries(client: httpx.Client) -> None:
    with run_sandbox(base_settings()) as sb:
        phone_call(sb, client)
        assert list(sb.state.webhooks.log) == []
        assert sb.state.webhooks.running == 0


@pytest.mark.parametrize("winner", ["overrides", "assistant", "number", "org"])
def test_server_url_precedence(
    receiver: tuple[Receiver, str], client: httpx.Client, winner: str
) -> None:
    rec, hook = receiver
    base = hook.rsplit("/", 1)[0]
    order = ["overrides", "assistant", "number", "org"]
    urls = {name: f"{base}/{name}" for name in order}
    present = order[order.index(winner) :]
    assistant: dict[str, Any] = {"id": ASSISTANT_ID}
    if "assistant" in present:
        assistant["server"] = {"url": urls["assistant"]}
    number = SeededPhoneNumber(
        id=NUMBER_ID,
        number="+15550100",
        server=ServerConfig(url=urls["number"]) if "number" in present else None,
    )
    settings = base_settings(
        assistants=[SeededAssistant(**assistant)],
        phone_numbers=[number],
        server=ServerConfig(url=urls["org"]),
        lifecycle=LifecycleSettings(ringing_after=0, in_progress_after=0, duration=0),
    )
    with run_sandbox(settings) as sb:
        extra = {"assistantOverrides": {"server": {"url": urls["overrides"]}}}
        phone_call(sb, client, **(extra if winner == "overrides" else {}))
        rec.wait_for(2)  # status-update (ended at once: zero durations), end-of-call-report
    assert {r["path"] for r in rec.received} == {f"/{winner}"}


def test_bearer_secret_and_headers(receiver: tuple[Receiver, str], client: httpx.Client) -> None:
    rec, url = receiver
    settings = base_settings(
        credentials=[
            BearerCredential(
                id="cred-b",
                type="bearer",
                token=SecretStr("tok-123"),
                headerName="X-Hook-Token",
                bearerPrefixEnabled=False,
            )
        ],
        server=ServerConfig(
            url=url, credentialId="cred-b", secret=SecretStr("legacy-s"), headers={"X-Tenant": "t1"}
        ),
        lifecycle=LifecycleSettings(ringing_after=0, in_progress_after=0, duration=0),
    )
    with run_sandbox(settings) as sb:
        phone_call(sb, client)
        rec.wait_for(2)
    headers = rec.received[0]["headers"]
    assert headers["x-hook-token"] == "tok-123"
    assert headers["x-vapi-secret"] == "legacy-s"
    assert headers["x-tenant"] == "t1"
    assert "authorization" not in headers


def test_bearer_default_header(receiver: tuple[Receiver, str], client: httpx.Client) -> None:
    rec, url = receiver
    settings = base_settings(
        credentials=[BearerCredential(id="c", type="bearer", token=SecretStr("tok"))],
        server=ServerConfig(url=url, credentialId="c"),
        lifecycle=LifecycleSettings(ringing_after=0, in_progress_after=0, duration=0),
    )
    with run_sandbox(settings) as sb:
        phone_call(sb, client)
        rec.wait_for(1)
    assert rec.received[0]["headers"]["authorization"] == "Bearer tok"


@pytest.mark.parametrize(
    ("options", "unit_ms"),
    [
        ({}, False),
        (
            {
                "algorithm": "sha512",
                "signatureEncoding": "base64",
                "signaturePrefix": "v1=",
                "timestampUnit": "ms",
            },
            True,
        ),
    ],
)
def test_hmac_signature(
    receiver: tuple[Receiver, str], client: httpx.Client, options: dict[str, Any], unit_ms: bool
) -> None:
    rec, url = receiver
    clock = ManualClock(start=1_800_000_000.25)
    cred = HmacCredential(id="h", type="hmac", secretKey=SecretStr("whsec-test"), **options)
    settings = base_settings(
        credentials=[cred], server=ServerConfig(url=url, credentialId="h"), lifecycle=LIFECYCLE
    )
    with run_sandbox(settings, clock=clock) as sb:
        phone_call(sb, client)
        clock.advance(1)
        rec.wait_for(1)
    got = rec.received[0]
    stamp = got["headers"]["x-timestamp"]
    assert stamp == ("1800000001250" if unit_ms else "1800000001")
    algo = hashlib.sha512 if options else hashlib.sha256
    digest = hmac.new(b"whsec-test", stamp.encode() + b"." + got["raw"], algo).digest()
    expected = ("v1=" + base64.b64encode(digest).decode()) if options else digest.hex()
    assert got["headers"]["x-signature"] == expected


def test_server_timeout_is_respected(receiver: tuple[Receiver, str], client: httpx.Client) -> None:
    rec, url = receiver
    rec.delay["status-update"] = 1.5
    settings = base_settings(
        server=ServerConfig(url=url, timeoutSeconds=1),
        lifecycle=LifecycleSettings(ringing_after=0, in_progress_after=100, duration=1),
    )
    with run_sandbox(settings) as sb:
        phone_call(sb, client)
        wait_until(lambda: any(d["error"] for d in sb.state.webhooks.log), timeout=5)
        delivery = client.get(sb.url + "/__sandbox/webhooks").json()[0]
    # The server's own timeoutSeconds (1 s, not the 20 s default) cut the delivery before the
    # receiver answered (it takes 1.5 s): no status, no reply, and the error names the limit.
    assert delivery["error"] == "timeout after 1.0s"
    assert delivery["responseStatus"] is None
    assert delivery["response"] is None
