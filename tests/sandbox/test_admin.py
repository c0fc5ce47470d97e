"""The `/__sandbox` admin API: off by default, request log redaction and bounds."""

from __future__ import annotations

import httpx
import pytest

from tests.support.sandbox import ASSISTANT_ID, base_settings, private, public
from vapi_proxy.sandbox import RunningSandbox, SandboxSettings, run_sandbox


@pytest.mark.parametrize(
    "path", ["/__sandbox/requests", "/__sandbox/calls", "/__sandbox/webhooks", "/__sandbox/faults"]
)
def test_admin_is_off_by_default(client: httpx.Client, path: str) -> None:
    with run_sandbox(SandboxSettings()) as sb:
        resp = client.get(sb.url + path)
    assert resp.status_code == 404
    assert resp.json()["message"] == f"Cannot GET {path}"


def test_request_log_redacts_keys(sim: RunningSandbox, client: httpx.Client) -> None:
    client.delete(sim.url + "/__sandbox/requests")
    body = {"assistantId": ASSISTANT_ID, "assistantOverrides": {"variableValues": {"u": "1"}}}
    client.post(
        sim.url + "/call/web?x=1",
        json=body,
        headers={**public(sim), "Origin": "https://app.example"},
    )
    client.get(sim.url + "/call", headers=private(sim))
    client.get(sim.url + "/call", headers={"Authorization": "Bearer wrong-key"})
    log = client.get(sim.url + "/__sandbox/requests").json()
    assert [(e["method"], e["path"], e["auth"]) for e in log] == [
        ("POST", "/call/web", "public-key"),
        ("GET", "/call", "private-key"),
        ("GET", "/call", None),
    ]
    first = log[0]
    assert first["query"] == "x=1"
    assert first["body"] == body
    assert first["headers"]["origin"] == "https://app.example"
    assert first["headers"]["authorization"] == "Bearer [redacted: public-key]"
    assert log[2]["headers"]["authorization"] == "Bearer [redacted: invalid]"
    text = str(log)
    assert sim.settings.private_key.get_secret_value() not in text
    assert sim.settings.public_key.get_secret_value() not in text
    assert client.delete(sim.url + "/__sandbox/requests").status_code == 200
    assert client.get(sim.url + "/__sandbox/requests").json() == []


def test_request_log_is_bounded_and_can_be_off(client: httpx.Client) -> None:
    with run_sandbox(base_settings(request_log_size=3)) as sb:
        for i in range(5):
            client.get(sb.url + "/call", params={"limit": i}, headers=private(sb))
        log = client.get(sb.url + "/__sandbox/requests").json()
        assert [e["query"] for e in log] == ["limit=2", "limit=3", "limit=4"]
    with run_sandbox(base_settings(request_log_enabled=False)) as sb:
        client.get(sb.url + "/call", headers=private(sb))
        assert client.get(sb.url + "/__sandbox/requests").json() == []


def test_admin_calls_listing(sim: RunningSandbox, client: httpx.Client) -> None:
    made = client.post(
        sim.url + "/call/web", json={"assistantId": ASSISTANT_ID}, headers=public(sim)
    ).json()
    listed = client.get(sim.url + "/__sandbox/calls").json()
    assert listed[0]["id"] == made["id"]
    missing = client.post(sim.url + "/__sandbox/calls/nope/end", json={})
    assert missing.status_code == 404


def test_call_store_is_bounded(client: httpx.Client) -> None:
    with run_sandbox(base_settings(max_calls=2)) as sb:
        ids = [
            client.post(
                sb.url + "/call/web", json={"assistantId": ASSISTANT_ID}, headers=public(sb)
            ).json()["id"]
            for _ in range(3)
        ]
        assert client.get(f"{sb.url}/call/{ids[0]}", headers=private(sb)).status_code == 404
        assert len(sb.state.calls) == 2
