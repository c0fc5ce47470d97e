"""Both server SDKs retry a failed `POST /call` on their own (Python `vapi-server-sdk` 3.0.0 and
npm `@vapi-ai/server-sdk` 2.0.1: 408/409/429/5xx, twice, after ~1 s then ~2 s). What that
means for duplicate calls, with faults injected at the simulator (docs/api.md, "Retries and
idempotency"):

- Vapi answers 5xx before creating anything: the proxy answers 503, releases the limits
  reservation and the `Idempotency-Key` claim, the SDK retries, and exactly one call exists.
- The request reached Vapi and the connection dropped (`drop-after-body`, "maybe sent"): the
  proxy answers 502 and keeps the reservation. Without a key the SDK's retry is a second
  creation request to Vapi (a real Vapi may then hold two calls). With a key the proxy stores
  the 502 and replays it to every retry: Vapi is asked once, whatever the SDK does.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from vapi import Vapi
from vapi.core.api_error import ApiError

from tests.support.clients import (
    HTTP,
    clear_requests,
    phone_profiles,
    seed_phone_number,
    upstream_requests,
)
from tests.support.node import run_node, sandbox_calls
from tests.support.proxy import ProxyFactory
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import ServerThread


@pytest.fixture(autouse=True)
def _clean(sandbox: RunningSandbox) -> Iterator[None]:
    HTTP.delete(f"{sandbox.url}/__sandbox/faults")
    clear_requests(sandbox)
    yield
    # A fault left unconsumed must not hit another module's test on the shared simulator.
    HTTP.delete(f"{sandbox.url}/__sandbox/faults")


def fault(sandbox: RunningSandbox, **spec: Any) -> None:
    response = HTTP.post(
        f"{sandbox.url}/__sandbox/faults", json={"path": "/call", "method": "POST", **spec}
    )
    assert response.status_code < 300, response.text


def creations(sandbox: RunningSandbox) -> list[dict[str, Any]]:
    """The `POST /call` requests that reached the simulator ("Vapi")."""
    return [e for e in upstream_requests(sandbox, "/call") if e["method"] == "POST"]


def python_create(
    proxy: ServerThread, key: str, number: str, idempotency_key: str | None = None
) -> Any:
    vapi = Vapi(token=key, base_url=proxy.url, httpx_client=HTTP)
    options: Any = None
    if idempotency_key is not None:
        options = {"additional_headers": {"Idempotency-Key": idempotency_key}}
    return vapi.calls.create(
        assistant_id="outbound", customer={"number": number}, request_options=options
    )


def node_create(
    proxy: ServerThread, key: str, number: str, idempotency_key: str | None = None
) -> dict[str, Any]:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    step = {
        "op": "calls.create",
        "args": {"assistantId": "outbound", "customer": {"number": number}},
        "headers": headers,
    }
    (result,) = run_node(proxy.url, key, [step])
    return result


# --- a 5xx from Vapi before it created anything -------------------------------------------


@pytest.mark.parametrize("status", [500, 503])
def test_python_sdk_retries_a_vapi_5xx_and_one_call_exists(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str, status: int
) -> None:
    number = f"+1415555{status}1"
    fault(sandbox, action="status", status=status, count=1)
    call = python_create(phone_proxy, user_key, number)
    # Attempt 1: Vapi's 5xx (the proxy answered 503); attempt 2 created the call.
    assert len(creations(sandbox)) == 2
    created = sandbox_calls(sandbox, number)
    assert [c["id"] for c in created] == [call.id]


@pytest.mark.parametrize("status", [500, 503])
def test_node_sdk_retries_a_vapi_5xx_and_one_call_exists(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str, status: int
) -> None:
    number = f"+1415555{status}2"
    fault(sandbox, action="status", status=status, count=1)
    result = node_create(phone_proxy, user_key, number)
    assert result["ok"], result
    assert len(creations(sandbox)) == 2
    assert [c["id"] for c in sandbox_calls(sandbox, number)] == [result["value"]["id"]]


def test_a_5xx_releases_the_idempotency_key_so_the_retry_creates_the_call(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    number = "+14155550601"
    key = f"retry-{uuid.uuid4()}"
    fault(sandbox, action="status", status=503, count=1)
    first = node_create(phone_proxy, user_key, number, key)
    assert first["ok"] and first["replayed"] is None, first
    # The same key later: the stored result, no new creation.
    again = node_create(phone_proxy, user_key, number, key)
    assert again["ok"] and again["replayed"] == "true"
    assert again["value"]["id"] == first["value"]["id"]
    assert len(creations(sandbox)) == 2
    assert [c["id"] for c in sandbox_calls(sandbox, number)] == [first["value"]["id"]]


# --- an ambiguous failure: the request reached Vapi, the connection dropped -----------------


def test_python_sdk_without_a_key_asks_vapi_again_after_an_ambiguous_failure(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    number = "+14155550602"
    fault(sandbox, action="drop-after-body", count=1)
    call = python_create(phone_proxy, user_key, number)
    # Both attempts reached Vapi. The simulator created nothing for the dropped one, but a
    # real Vapi may have: that would be a second call the caller never hears of.
    assert len(creations(sandbox)) == 2
    assert [c["id"] for c in sandbox_calls(sandbox, number)] == [call.id]


def test_node_sdk_without_a_key_asks_vapi_again_after_an_ambiguous_failure(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    number = "+14155550603"
    fault(sandbox, action="drop-after-body", count=1)
    result = node_create(phone_proxy, user_key, number)
    assert result["ok"], result
    assert len(creations(sandbox)) == 2
    assert [c["id"] for c in sandbox_calls(sandbox, number)] == [result["value"]["id"]]


def test_python_sdk_with_a_key_never_asks_vapi_twice(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    number = "+14155550604"
    fault(sandbox, action="drop-after-body", count=1)
    with pytest.raises(ApiError) as caught:
        python_create(phone_proxy, user_key, number, f"retry-{uuid.uuid4()}")
    # The SDK tried three times; the proxy asked Vapi once and replayed its 502 twice.
    assert caught.value.status_code == 502
    assert (caught.value.headers or {}).get("idempotent-replayed") == "true"
    assert "connection to Vapi failed" in caught.value.body["message"]
    assert len(creations(sandbox)) == 1
    assert sandbox_calls(sandbox, number) == []


def test_node_sdk_with_a_key_never_asks_vapi_twice(
    phone_proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    number = "+14155550605"
    fault(sandbox, action="drop-after-body", count=1)
    result = node_create(phone_proxy, user_key, number, f"retry-{uuid.uuid4()}")
    assert not result["ok"] and result["status"] == 502, result
    assert result["replayed"] == "true"
    assert "connection to Vapi failed" in result["body"]["message"]
    assert len(creations(sandbox)) == 1
    assert sandbox_calls(sandbox, number) == []


def test_an_ambiguous_failure_keeps_its_limits_reservation(
    make_proxy: ProxyFactory, sandbox: RunningSandbox, user_key: str
) -> None:
    """The maybe-started call holds its concurrency slot (until its end or expiry), so a caller
    at its limit is refused (429) rather than allowed a possible extra call."""

    def one_at_a_time(config: dict[str, Any]) -> None:
        phone_profiles(config)
        config["limits"] = {
            "backend": "memory://",
            "rules": [{"name": "one-call", "concurrency": 1}],
        }

    seed_phone_number(sandbox)
    proxy = make_proxy(one_at_a_time)
    vapi = Vapi(token=user_key, base_url=proxy.url, httpx_client=HTTP)
    fault(sandbox, action="drop-after-body", count=1)
    with pytest.raises(ApiError) as first:
        vapi.calls.create(
            assistant_id="outbound",
            customer={"number": "+14155550606"},
            request_options={"max_retries": 0},
        )
    assert first.value.status_code == 502
    with pytest.raises(ApiError) as second:
        vapi.calls.create(
            assistant_id="outbound",
            customer={"number": "+14155550607"},
            request_options={"max_retries": 0},
        )
    assert second.value.status_code == 429
    assert len(creations(sandbox)) == 1


def test_an_unreadable_2xx_is_maybe_sent_so_a_keyed_retry_does_not_create_again(
    make_proxy: ProxyFactory, user_key: str
) -> None:
    posts: list[bytes] = []

    async def fake_vapi(scope: Any, receive: Any, send: Any) -> None:
        """Vapi that creates a call for every POST /call but garbles its first reply."""
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        posts.append(body)
        created = b'{"id": "call-%d", "type": "outboundPhoneCall", "status": "queued"}'
        reply = b"<html>created</html>" if len(posts) == 1 else created % len(posts)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": reply})

    with ServerThread(fake_vapi, lifespan="off") as vapi_server:

        def pointed_at_fake(config: dict[str, Any]) -> None:
            phone_profiles(config)
            config["vapi"]["base_url"] = vapi_server.url

        proxy = make_proxy(pointed_at_fake)
        vapi = Vapi(token=user_key, base_url=proxy.url, httpx_client=HTTP)
        # A replayed 502 would be the right outcome; only the creations count.
        with contextlib.suppress(ApiError):
            vapi.calls.create(
                assistant_id="outbound",
                customer={"number": "+14155550608"},
                request_options={"additional_headers": {"Idempotency-Key": str(uuid.uuid4())}},
            )
        # Vapi answered the first POST with 201: it must not be asked again under the key.
        assert len(posts) == 1
