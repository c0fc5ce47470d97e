"""What the client sees when Vapi refuses, fails, is slow or cannot be reached."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ProxyFactory
from tests.proxy.test_edge import assert_envelope
from tests.proxy.test_web_call import post, upstream_bodies
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import free_port


@pytest.fixture(autouse=True)
def _reset(sandbox: RunningSandbox) -> Iterator[None]:
    httpx.delete(sandbox.url + "/__sandbox/requests", timeout=5)
    httpx.delete(sandbox.url + "/__sandbox/faults", timeout=5)
    yield
    httpx.delete(sandbox.url + "/__sandbox/faults", timeout=5)


def inject(sandbox: RunningSandbox, **fault: Any) -> None:
    reply = httpx.post(sandbox.url + "/__sandbox/faults", json={"path": "/call/web", **fault})
    assert reply.status_code in (200, 201), reply.text


def test_vapis_own_4xx_message_is_passed_back(make_proxy: ProxyFactory, user_key: str) -> None:
    # A profile pointing at an assistant Vapi does not have: Vapi's 4xx message reaches the app.
    server = make_proxy(
        lambda c: c["profiles"].update(
            ghost={"assistant_id": "00000000-0000-0000-0000-000000000000"}
        )
    )
    reply = post(server, {"assistantId": "ghost"}, user_key)
    assert 400 <= reply.status_code < 500
    body = assert_envelope(reply, reply.status_code)
    assert "ssistant" in str(body["message"])


@pytest.mark.parametrize("status", [500, 502, 503])
def test_vapi_server_errors_become_502(
    proxy: Any, sandbox: RunningSandbox, user_key: str, status: int
) -> None:
    inject(sandbox, action="status", status=status, count=1)
    reply = post(proxy, {"assistantId": "sales-coach"}, user_key)
    body = assert_envelope(reply, 502)
    assert f"status {status}" in str(body["message"])
    assert "support@vapi.ai" not in reply.text


def test_vapi_rate_limit_is_429_with_retry_after(
    proxy: Any, sandbox: RunningSandbox, user_key: str
) -> None:
    inject(sandbox, action="status", status=429, retry_after=7, count=1)
    reply = post(proxy, {"assistantId": "sales-coach"}, user_key)
    assert_envelope(reply, 429)
    assert reply.headers["retry-after"] == "7"


def test_a_rejected_private_key_is_not_the_callers_fault(
    make_proxy: ProxyFactory, user_key: str
) -> None:
    server = make_proxy(api_key="wrong-private-key-for-this-test")
    reply = post(server, {"assistantId": "sales-coach"}, user_key)
    body = assert_envelope(reply, 502)
    assert "operator" in str(body["message"])
    assert "wrong-private-key" not in reply.text


def test_unreachable_vapi_is_502(make_proxy: ProxyFactory, user_key: str) -> None:
    port = free_port()
    server = make_proxy(lambda c: c["vapi"].update(base_url=f"http://127.0.0.1:{port}"))
    reply = post(server, {"assistantId": "sales-coach"}, user_key)
    body = assert_envelope(reply, 502)
    assert "Could not reach Vapi" in str(body["message"])


def test_slow_vapi_is_504(make_proxy: ProxyFactory, sandbox: RunningSandbox, user_key: str) -> None:
    server = make_proxy(lambda c: c["vapi"].update(timeout_seconds=0.3))
    inject(sandbox, latency_seconds=2, count=1)
    reply = post(server, {"assistantId": "sales-coach"}, user_key)
    assert_envelope(reply, 504)


@pytest.mark.parametrize("action", ["drop-before-body", "drop-after-body"])
def test_a_dropped_connection_is_502_and_not_retried(
    proxy: Any, sandbox: RunningSandbox, user_key: str, action: str
) -> None:
    inject(sandbox, action=action, count=1)
    reply = post(proxy, {"assistantId": "sales-coach"}, user_key)
    assert_envelope(reply, 502)
    # The request may have reached Vapi: a retry could start a second call, so none is made.
    assert len(upstream_bodies(sandbox)) <= 1
