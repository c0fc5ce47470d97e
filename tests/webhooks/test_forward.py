"""Forwarding to the app: signed copies through the outbox survive an app outage; request types
(tool-calls) are relayed within the deadline or answered with errors."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.app_stub import AppStub
from tests.support.webhooks import (
    HookProxyFactory,
    Keys,
    on_server,
    runtime,
    start_web_call,
    wait_for,
)
from vapi_proxy.sandbox import ManualClock
from vapi_proxy.testing import ServerThread, free_port
from vapi_proxy.webhooks.forward import verify_signature


def forwarding(url: str, secret_file: str, **extra: Any) -> Any:
    def patch(config: dict[str, Any]) -> None:
        config["webhooks"]["forward"] = {
            "targets": [{"url": url, "types": ["status-update", "end-of-call-report"]}],
            "secret_file": secret_file,
            # Retries are driven by hand below (drain_once with a later clock), not by time.
            "retry_base_seconds": 3600,
            "poll_seconds": 60,
            "timeout_seconds": 2,
            **extra,
        }

    return patch


def signed(keys: Keys, message: dict[str, Any]) -> dict[str, Any]:
    body = orjson.dumps({"message": message})
    ts = str(int(time.time()))
    mac = hmac.new(keys.hmac.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"content": body, "headers": {"x-signature": mac, "x-timestamp": ts}}


def test_events_wait_out_an_app_outage_and_none_is_lost(
    make_hook_proxy: HookProxyFactory,
    clock: ManualClock,
    keys: Keys,
    app_secret: str,
    user_key: str,
) -> None:
    port = free_port()  # nothing listens here yet: the app is down
    proxy = make_hook_proxy("hmac", forwarding(f"http://127.0.0.1:{port}/events", app_secret))
    call_ids = [start_web_call(proxy, user_key).json()["id"] for _ in range(2)]
    clock.advance(35)
    hooks = runtime(proxy).webhook_stats
    # in-progress, ended and the report for each call (web calls do not ring).
    wait_for(lambda: hooks.by_type["end-of-call-report"] >= 2 and hooks.forward_failures >= 6)
    hang = signed(keys, {"type": "hang", "timestamp": 1, "call": {"id": call_ids[0]}})
    assert httpx.post(proxy.url + "/webhook", timeout=5, **hang).status_code == 200
    ledger = runtime(proxy).ledger
    assert on_server(proxy, ledger.outbox_counts()) == {"pending": 6}  # `hang` is filtered out

    app = AppStub()
    with ServerThread(app, port=port, lifespan="off"):
        forwarder = runtime(proxy).forwarder
        assert on_server(proxy, forwarder.drain_once(now=time.time() + 7200)) == 6
    assert on_server(proxy, ledger.outbox_counts()) == {"delivered": 6}
    assert len(app.received) == 6
    seen = set()
    for delivery in app.received:
        headers, body = delivery["headers"], delivery["body"]
        assert verify_signature(
            [keys.app.encode()], headers["x-vapi-proxy-signature"], body, now=time.time()
        )
        message = orjson.loads(body)["message"]
        assert message["type"] == headers["x-vapi-proxy-event-type"]
        assert message["call"]["id"] in call_ids
        seen.add(headers["x-vapi-proxy-event-id"])
    assert len(seen) == 6
    types = sorted(orjson.loads(d["body"])["message"]["type"] for d in app.received)
    assert types.count("end-of-call-report") == 2


def test_an_event_is_parked_after_max_attempts(
    make_hook_proxy: HookProxyFactory, keys: Keys, app_secret: str
) -> None:
    app = AppStub(status=503)
    with ServerThread(app, lifespan="off") as server:
        proxy = make_hook_proxy(
            "hmac", forwarding(server.url + "/events", app_secret, max_attempts=2)
        )
        message = {"type": "status-update", "status": "ended", "timestamp": 7, "call": {"id": "x"}}
        assert (
            httpx.post(proxy.url + "/webhook", timeout=5, **signed(keys, message)).status_code
            == 200
        )
        forwarder = runtime(proxy).forwarder
        ledger = runtime(proxy).ledger
        wait_for(lambda: len(app.received) >= 1)  # the background drain's first attempt
        wait_for(lambda: on_server(proxy, ledger.outbox_counts()).get("pending") == 1)
        on_server(proxy, forwarder.drain_once(now=time.time() + 7200))
    assert on_server(proxy, ledger.outbox_counts()) == {"parked": 1}
    assert runtime(proxy).webhook_stats.forward_parked == 1
    assert len(app.received) == 2


@pytest.fixture
def tool_app() -> Iterator[tuple[AppStub, str]]:
    app = AppStub(reply={"results": [{"toolCallId": "tc-1", "name": "lookup", "result": "42 °C"}]})
    with ServerThread(app, lifespan="off") as server:
        try:
            yield app, server.url
        finally:
            if app.hold is not None:
                app.hold.set()  # a held request must finish before the server can stop


TOOL_CALLS = {
    "type": "tool-calls",
    "timestamp": 1,
    "call": {"id": "call-t"},
    "toolCallList": [
        {"id": "tc-1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
        {"id": "tc-2", "name": "weather", "arguments": {"city": "Berlin"}},
    ],
}


def test_tool_calls_are_relayed_or_answered_with_errors(
    make_hook_proxy: HookProxyFactory,
    keys: Keys,
    app_secret: str,
    tool_app: tuple[AppStub, str],
) -> None:
    app, url = tool_app

    def patch(config: dict[str, Any]) -> None:
        config["webhooks"]["respond"] = {
            "url": url + "/tools",
            "deadline_seconds": 0.5,
            "error_message": "The tool is down.",
        }
        config["webhooks"]["forward"] = {"secret_file": app_secret}

    proxy = make_hook_proxy("hmac", patch)
    reply = httpx.post(proxy.url + "/webhook", timeout=5, **signed(keys, TOOL_CALLS))
    assert reply.json() == app.reply
    relayed = app.received[0]
    assert relayed["path"] == "/tools"
    assert orjson.loads(relayed["body"])["message"]["type"] == "tool-calls"

    app.status = 500
    failed = httpx.post(proxy.url + "/webhook", timeout=5, **signed(keys, TOOL_CALLS))
    assert failed.json() == {
        "results": [
            {"toolCallId": "tc-1", "name": "lookup", "error": "The tool is down."},
            {"toolCallId": "tc-2", "name": "weather", "error": "The tool is down."},
        ]
    }
    # An app that does not answer: the deadline's error reply comes while the app still holds
    # the request (without the deadline, the post would wait for the app and time out).
    app.status, app.hold = 200, threading.Event()
    answered = app.answered
    late = httpx.post(proxy.url + "/webhook", timeout=5, **signed(keys, TOOL_CALLS))
    assert late.json()["results"][0]["error"] == "The tool is down."
    assert len(app.received) == 3  # relayed, and not answered yet
    assert app.answered == answered
    app.hold.set()
    app.hold = None
    transfer = {"type": "transfer-destination-request", "timestamp": 2, "call": {"id": "c"}}
    app.status = 503
    answer = httpx.post(proxy.url + "/webhook", timeout=5, **signed(keys, transfer))
    assert answer.json() == {"error": "The tool is down."}
    assert runtime(proxy).webhook_stats.relayed == {"ok": 1, "failed": 3}
