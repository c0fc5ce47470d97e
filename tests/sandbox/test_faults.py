"""Fault injection over real sockets: error statuses, dropped connections, broken streams."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.sandbox import ASSISTANT_ID, base_settings, private, public, wait_until
from vapi_proxy.sandbox import FaultSpec, ManualClock, RunningSandbox, run_sandbox

WEB = {"assistantId": ASSISTANT_ID}


@pytest.fixture
def fresh() -> Iterator[RunningSandbox]:
    with run_sandbox(base_settings()) as sb:
        yield sb


def add(sb: RunningSandbox, client: httpx.Client, **spec: object) -> None:
    resp = client.post(sb.url + "/__sandbox/faults", json=spec)
    assert resp.status_code == 201, resp.text


def test_503_body_then_recovers(fresh: RunningSandbox, client: httpx.Client) -> None:
    add(fresh, client, path="/call/web", action="status", status=503, count=2)
    codes = [
        client.post(fresh.url + "/call/web", json=WEB, headers=public(fresh)) for _ in range(3)
    ]
    assert [r.status_code for r in codes] == [503, 503, 201]
    assert codes[0].json() == {
        "message": "Service Unavailable",
        "error": "Service Unavailable",
        "statusCode": 503,
    }


def test_429_with_retry_after(fresh: RunningSandbox, client: httpx.Client) -> None:
    add(fresh, client, method="POST", path="/call*", action="status", status=429, retry_after=7)
    resp = client.post(fresh.url + "/call/web", json=WEB, headers=public(fresh))
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "7"
    assert resp.json()["message"] == "Rate limit exceeded"
    # Method and path patterns are respected.
    assert client.get(fresh.url + "/call", headers=private(fresh)).status_code == 200


def test_a_refusal_with_its_own_message_and_a_textual_retry_after(
    fresh: RunningSandbox, client: httpx.Client
) -> None:
    reason = ["assistantOverrides.variableValues.firstName must be a string"]
    add(fresh, client, path="/call/web", action="status", status=400, message=reason, count=1)
    add(fresh, client, path="/call/web", action="status", status=404, count=1)
    date = "Thu, 01 Jan 2015 00:00:00 GMT"
    add(fresh, client, path="/call/web", action="status", status=503, retry_after=date, count=1)
    first, second, third = (
        client.post(fresh.url + "/call/web", json=WEB, headers=public(fresh)) for _ in range(3)
    )
    assert first.status_code == 400
    assert first.json() == {"message": reason, "error": "Bad Request", "statusCode": 400}
    assert second.json() == {"message": "Not Found", "error": "Not Found", "statusCode": 404}
    assert third.status_code == 503 and third.headers["retry-after"] == date


def test_500_body(fresh: RunningSandbox, client: httpx.Client) -> None:
    add(fresh, client, path="/call/web", action="status", status=500)
    resp = client.post(fresh.url + "/call/web", json=WEB, headers=public(fresh))
    assert resp.json() == {
        "statusCode": 500,
        "message": "Internal server error. Contact support@vapi.ai for help.",
    }


@pytest.mark.parametrize("action", ["drop-before-body", "drop-after-body"])
def test_dropped_connection(
    fresh: RunningSandbox, client: httpx.Client, action: str, caplog: pytest.LogCaptureFixture
) -> None:
    add(fresh, client, path="/call/web", action=action, count=1)
    uvicorn_log = logging.getLogger("uvicorn.error")  # does not propagate to the root logger
    uvicorn_log.addHandler(caplog.handler)
    try:
        with pytest.raises(httpx.TransportError):
            client.post(fresh.url + "/call/web", json=WEB, headers=public(fresh))
        ok = client.post(fresh.url + "/call/web", json=WEB, headers=public(fresh))
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    # A deliberate drop, not an app bug: uvicorn must not log a missing response.
    assert not [r for r in caplog.records if "ASGI callable" in r.getMessage()]
    assert ok.status_code == 201
    assert client.post(fresh.url + "/call/web", json=WEB, headers=public(fresh)).status_code == 201
    log = client.get(fresh.url + "/__sandbox/requests").json()
    dropped = log[0]
    assert dropped["path"] == "/call/web"
    assert (dropped["body"] is None) == (action == "drop-before-body")


def test_latency(client: httpx.Client) -> None:
    """On a manual clock: the reply waits for exactly the injected latency on the simulator's
    clock, and comes once the clock has moved that far."""
    clock = ManualClock(start=1_800_000_000.0)
    with run_sandbox(base_settings(), clock=clock) as sb, ThreadPoolExecutor(1) as pool:
        add(sb, client, path="/call/web", latency_seconds=0.3, count=1)
        reply = pool.submit(client.post, sb.url + "/call/web", json=WEB, headers=public(sb))
        due = clock.now() + 0.3
        # Raises if the simulator never waits for exactly that (10 s: a hang guard).
        wait_until(lambda: clock.pending() == [pytest.approx(due)], timeout=10)
        assert not reply.done()
        clock.advance(0.3)
        assert reply.result(timeout=10).status_code == 201


def read_stream(
    client: httpx.Client,
    url: str,
    body: dict[str, object],
    headers: dict[str, str],
    into: list[str],
) -> None:
    """Collect non-empty SSE lines into `into` until the stream ends (or fails)."""
    with client.stream("POST", url, json=body, headers=headers) as resp:
        into.extend(line for line in resp.iter_lines() if line)


def test_stalled_stream(fresh: RunningSandbox) -> None:
    body = {"assistantId": ASSISTANT_ID, "input": "a long enough input", "stream": True}
    lines: list[str] = []
    with httpx.Client(timeout=httpx.Timeout(5, read=1.0)) as client:
        add(fresh, client, path="/chat", action="stall-stream", after_events=2)
        with pytest.raises(httpx.ReadTimeout):
            read_stream(client, fresh.url + "/chat", body, private(fresh), lines)
    assert len(lines) == 2


def test_truncated_stream(fresh: RunningSandbox, client: httpx.Client) -> None:
    body = {"assistantId": ASSISTANT_ID, "input": "a long enough input"}
    add(fresh, client, path="/chat/responses", action="truncate-stream", after_events=1)
    lines: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        read_stream(client, fresh.url + "/chat/responses", body, private(fresh), lines)
    assert [line.split(": ")[0] for line in lines] == ["event", "data"]


def test_faults_from_settings_listing_and_clear(client: httpx.Client) -> None:
    settings = base_settings(faults=[FaultSpec(path="/call/web", action="status", status=502)])
    with run_sandbox(settings) as sb:
        assert client.post(sb.url + "/call/web", json=WEB, headers=public(sb)).status_code == 502
        listed = client.get(sb.url + "/__sandbox/faults").json()
        assert listed[0]["status"] == 502
        assert listed[0]["remaining"] is None
        assert client.delete(sb.url + "/__sandbox/faults").json() == []
        assert client.post(sb.url + "/call/web", json=WEB, headers=public(sb)).status_code == 201


def test_invalid_fault_is_400(fresh: RunningSandbox, client: httpx.Client) -> None:
    resp = client.post(fresh.url + "/__sandbox/faults", json={"path": "/x", "status": 418})
    assert resp.status_code == 400


def test_requests_are_logged_on_arrival_not_after_latency(fresh: RunningSandbox) -> None:
    with httpx.Client(timeout=httpx.Timeout(5, read=0.2)) as client:
        add(fresh, client, path="/call/web", latency_seconds=1.5, count=1)
        with pytest.raises(httpx.ReadTimeout):
            client.post(fresh.url + "/call/web", json=WEB, headers=public(fresh))
        log = client.get(fresh.url + "/__sandbox/requests").json()
    assert [(e["path"], e["auth"], e["body"]) for e in log] == [("/call/web", "public-key", WEB)]
