"""Limits, the ledger and idempotency on `POST /call/web`, through real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest

from tests.clients.support import HTTP, bearer, observed_sandbox, proxy_for, wait_until
from tests.conftest import ProxyFactory
from tests.proxy.test_edge import assert_envelope
from tests.proxy.test_web_call import post, upstream_bodies
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import ServerThread

T = TypeVar("T")


def on_server(server: ServerThread, coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on the server's own event loop (its engine lives there)."""
    assert server.loop is not None
    return asyncio.run_coroutine_threadsafe(coro, server.loop).result(timeout=10)


def runtime(server: ServerThread) -> Any:
    return server.app.runtime  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _reset(sandbox: RunningSandbox) -> Iterator[None]:
    httpx.delete(sandbox.url + "/__sandbox/requests", timeout=5)
    httpx.delete(sandbox.url + "/__sandbox/faults", timeout=5)
    yield
    httpx.delete(sandbox.url + "/__sandbox/faults", timeout=5)


def limited(rules: list[dict[str, Any]]) -> Any:
    def patch(config: dict[str, Any]) -> None:
        config["limits"] = {"backend": "memory://", "rules": rules}

    return patch


def test_a_created_call_is_in_the_ledger_with_its_caller(
    proxy: ServerThread, user_key: str
) -> None:
    reply = post(proxy, {"assistantId": "sales-coach"}, user_key, headers={"X-Request-ID": "rq-9"})
    assert reply.status_code == 201
    call_id = reply.json()["id"]
    record = on_server(proxy, runtime(proxy).ledger.get_call(call_id))
    assert record is not None
    assert record.identity_key == "api_key:alice"
    assert record.profile == "sales-coach"
    assert record.kind == "web"
    assert record.request_id == "rq-9"
    assert record.max_duration_seconds == 600


def test_quota_refusal_is_a_readable_429_with_retry_after(
    make_proxy: ProxyFactory, sandbox: RunningSandbox, user_key: str
) -> None:
    server = make_proxy(limited([{"name": "daily", "quota": {"per_day": 2}}]))
    for _ in range(2):
        assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201
    httpx.delete(sandbox.url + "/__sandbox/requests", timeout=5)
    refused = post(server, {"assistantId": "sales-coach"}, user_key)
    body = assert_envelope(refused, 429)
    assert "2 calls" in str(body["message"])
    assert int(refused.headers["retry-after"]) >= 1
    assert upstream_bodies(sandbox) == []


def test_a_failed_upstream_call_gives_its_reservation_back(
    make_proxy: ProxyFactory, sandbox: RunningSandbox, user_key: str
) -> None:
    server = make_proxy(limited([{"name": "daily", "quota": {"per_day": 1}}]))
    fault = {"path": "/call/web", "action": "status", "status": 500, "count": 1}
    httpx.post(sandbox.url + "/__sandbox/faults", json=fault, timeout=5)
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 503
    # The quota of one is still there because Vapi created nothing.
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 429


def test_concurrency_holds_under_a_burst(
    make_proxy: ProxyFactory, sandbox: RunningSandbox, user_key: str
) -> None:
    server = make_proxy(
        limited([{"name": "live", "concurrency": 3}, {"name": "daily", "quota": {"per_day": 10}}])
    )
    with ThreadPoolExecutor(max_workers=20) as pool:
        replies = list(
            pool.map(lambda _: post(server, {"assistantId": "sales-coach"}, user_key), range(20))
        )
    statuses = sorted(r.status_code for r in replies)
    assert statuses.count(201) == 3, statuses
    assert set(statuses) == {201, 429}
    for reply in replies:
        if reply.status_code == 429:
            assert_envelope(reply, 429)
    assert len(upstream_bodies(sandbox)) == 3


def test_an_idempotency_key_replays_the_first_call(
    proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    headers = {"Idempotency-Key": "create-42"}
    first = post(proxy, {"assistantId": "sales-coach"}, user_key, headers=headers)
    second = post(proxy, {"assistantId": "sales-coach"}, user_key, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert len(upstream_bodies(sandbox)) == 1
    other = post(proxy, {"assistantId": "support"}, user_key, headers=headers)
    assert_envelope(other, 422)
    bad = post(proxy, {"assistantId": "sales-coach"}, user_key, headers={"Idempotency-Key": "a b"})
    assert_envelope(bad, 400)


def test_idempotency_keys_belong_to_their_caller(
    proxy: ServerThread, sandbox: RunningSandbox, user_key: str, other_key: str
) -> None:
    headers = {"Idempotency-Key": "shared-key"}
    mine = post(proxy, {"assistantId": "support"}, user_key, headers=headers)
    theirs = post(proxy, {"assistantId": "support"}, other_key, headers=headers)
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


def test_readyz_reports_each_dependency(proxy: ServerThread, sandbox: RunningSandbox) -> None:
    reply = httpx.get(proxy.url + "/readyz")
    assert reply.status_code == 200, reply.text
    checks = reply.json()["checks"]
    assert checks["ledger"]["ok"] is True
    assert checks["limits"]["ok"] is True
    assert upstream_bodies(sandbox) == []
    assert httpx.get(sandbox.url + "/__sandbox/requests").json() == []


def test_readyz_details_are_for_internal_networks_only(make_proxy: Any) -> None:
    server = make_proxy(lambda c: c.update(metrics={"allowed_networks": ["10.0.0.0/8"]}))
    reply = httpx.get(server.url + "/readyz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ready"}


def test_a_creation_cancelled_mid_upstream_is_never_created_again_with_its_key(
    user_key: str, other_key: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The task is torn down while Vapi holds the request (latency injected): the call may
    exist, so the reservation stays and the key replays a 502 instead of creating again."""

    def one_at_a_time(config: dict[str, Any]) -> None:
        config["limits"] = {"backend": "memory://", "rules": [{"name": "one", "concurrency": 1}]}

    folder = str(tmp_path_factory.mktemp("cancelled"))
    with (
        observed_sandbox() as observed,
        proxy_for(observed.sandbox, user_key, other_key, folder, one_at_a_time) as server,
    ):
        fault = {"path": "/call/web", "action": "none", "latency_seconds": 2, "count": 1}
        assert HTTP.post(f"{observed.sandbox.url}/__sandbox/faults", json=fault).is_success
        headers = {**bearer(user_key), "Idempotency-Key": "cancel-me"}
        body = {"assistantId": "sales-coach"}

        async def create() -> httpx.Response:
            transport = httpx.ASGITransport(app=server.app, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
                return await client.post("/call/web", json=body, headers=headers)

        async def start() -> asyncio.Future[httpx.Response]:
            return asyncio.ensure_future(create())

        def sent() -> list[str]:
            return [k for k in observed.log.started if k.endswith(":/call/web")]

        task = on_server(server, start())
        assert wait_until(lambda: len(sent()) == 1, timeout=5)
        assert server.loop is not None
        server.loop.call_soon_threadsafe(task.cancel)
        assert wait_until(task.done, timeout=5) and task.cancelled()

        async def claim() -> Any:
            return await runtime(server).ledger.idempotency_get("cancel-me", "api_key:alice")

        assert wait_until(lambda: on_server(server, claim()) is not None, timeout=5)
        retried = HTTP.post(f"{server.url}/call/web", json=body, headers=headers)
        assert retried.status_code == 502, retried.text
        assert retried.headers["idempotent-replayed"] == "true"
        replayed = retried.json()
        assert set(replayed) == {"message", "error", "statusCode", "requestId"}
        assert "may have been created" in str(replayed["message"])
        # The possible call keeps its slot: a new key is refused by the limit, not sent.
        other = HTTP.post(
            f"{server.url}/call/web",
            json=body,
            headers={**bearer(user_key), "Idempotency-Key": "another"},
        )
        assert_envelope(other, 429)
        assert len(sent()) == 1
        admissions = runtime(server).metrics.admissions
        assert admissions.labels("call", "cancelled")._value.get() == 1
        assert admissions.labels("call", "refused")._value.get() == 1
        # Let the simulator finish its delayed answer before it is shut down.
        assert wait_until(lambda: sent()[0] in observed.log.finished, timeout=5)
