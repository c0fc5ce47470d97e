"""`POST /webhook` as HTTP sees it: the answer's headers, other methods, the route's metrics
label, and one event however many copies of a delivery arrive at once."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

import httpx
import orjson
import sqlalchemy as sa

from tests.support.webhooks import HookProxyFactory, Keys, on_server, runtime, start_web_call
from vapi_proxy.ledger.schema import call_events
from vapi_proxy.testing import ServerThread

ENVELOPE = {"message", "error", "statusCode", "requestId"}


def signed(keys: Keys, message: dict[str, Any]) -> dict[str, Any]:
    body = orjson.dumps({"message": message})
    stamp = str(int(time.time()))
    mac = hmac.new(keys.hmac.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    headers = {"x-signature": mac, "x-timestamp": stamp, "content-type": "application/json"}
    return {"content": body, "headers": headers}


def status_update(call_id: str, value: str) -> dict[str, Any]:
    return {
        "type": "status-update",
        "status": value,
        "timestamp": int(time.time() * 1000),
        "call": {"id": call_id},
    }


def event_rows(proxy: ServerThread, call_id: str) -> list[Any]:
    async def rows() -> list[Any]:
        async with runtime(proxy).ledger.database.read() as conn:
            query = sa.select(call_events).where(call_events.c.call_id == call_id)
            return list(await conn.execute(query))

    return on_server(proxy, rows())


def test_the_answer_is_uncached_json_with_the_request_id(
    make_hook_proxy: HookProxyFactory, keys: Keys, user_key: str
) -> None:
    proxy = make_hook_proxy("hmac")
    call_id = start_web_call(proxy, user_key).json()["id"]
    delivery = signed(keys, status_update(call_id, "in-progress"))
    reply = httpx.post(proxy.url + "/webhook", timeout=10, **delivery)
    assert reply.status_code == 200
    assert reply.json() == {}
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    assert int(reply.headers["content-length"]) == len(reply.content)
    assert reply.headers["x-request-id"]


def test_a_compressed_delivery_is_a_415_and_records_nothing(
    make_hook_proxy: HookProxyFactory, keys: Keys, user_key: str
) -> None:
    """A coded body is refused by name (not as a bad signature or bad JSON), with nothing
    recorded; the same delivery sent plain is taken."""
    import gzip

    proxy = make_hook_proxy("hmac")
    call_id = start_web_call(proxy, user_key).json()["id"]
    delivery = signed(keys, status_update(call_id, "in-progress"))
    coded = {
        "content": gzip.compress(delivery["content"]),
        "headers": {**delivery["headers"], "content-encoding": "gzip"},
    }
    reply = httpx.post(proxy.url + "/webhook", timeout=10, **coded)
    assert reply.status_code == 415
    assert set(reply.json()) == ENVELOPE
    assert "gzip" in reply.json()["message"]
    assert event_rows(proxy, call_id) == []
    assert httpx.post(proxy.url + "/webhook", timeout=10, **delivery).status_code == 200
    assert len(event_rows(proxy, call_id)) == 1


def test_other_methods_get_the_405_envelope(make_hook_proxy: HookProxyFactory) -> None:
    proxy = make_hook_proxy("hmac")
    for method in ("GET", "PUT", "DELETE"):
        reply = httpx.request(method, proxy.url + "/webhook", timeout=10)
        assert reply.status_code == 405, method
        assert set(reply.json()) == ENVELOPE
        assert reply.headers["allow"] == "POST"


def test_deliveries_and_refusals_are_counted_under_the_route(
    make_hook_proxy: HookProxyFactory, keys: Keys, user_key: str
) -> None:
    # The route's metrics label comes from its endpoint: a delivery counted as `unmatched`
    # would vanish from every dashboard of the webhook path.
    proxy = make_hook_proxy("hmac")
    call_id = start_web_call(proxy, user_key).json()["id"]
    good = signed(keys, status_update(call_id, "in-progress"))
    forged = {**good, "headers": {**good["headers"], "x-signature": "0" * 64}}
    assert httpx.post(proxy.url + "/webhook", timeout=10, **good).status_code == 200
    refused = httpx.post(proxy.url + "/webhook", timeout=10, **forged)
    assert refused.status_code == 401
    assert set(refused.json()) == ENVELOPE
    registry = runtime(proxy).metrics.registry

    def count(status: str) -> float | None:
        labels = {"route": "/webhook", "method": "POST", "status": status, "profile": ""}
        value: float | None = registry.get_sample_value("vapi_proxy_requests_total", labels)
        return value

    assert count("200") == 1
    assert count("401") == 1


def test_copies_arriving_together_make_one_event(
    make_hook_proxy: HookProxyFactory, keys: Keys, user_key: str
) -> None:
    # Vapi's retries and a replayed capture can land in the same group commit as the original:
    # every copy is answered 200, exactly one is recorded, the rest count as duplicates, and a
    # forged copy among them is refused.
    proxy = make_hook_proxy("hmac")
    call_id = start_web_call(proxy, user_key).json()["id"]
    delivery = signed(keys, status_update(call_id, "in-progress"))
    forged = {
        **delivery,
        "content": delivery["content"].replace(b"in-progress", b"ended"),
    }
    before = runtime(proxy).webhook_stats.duplicates

    async def send_all() -> list[int]:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
            copies = [client.post("/webhook", **delivery) for _ in range(12)]
            replies = await asyncio.gather(*copies, client.post("/webhook", **forged))
        return [r.status_code for r in replies]

    codes = asyncio.run(send_all())
    assert codes == [200] * 12 + [401]
    rows = event_rows(proxy, call_id)
    assert [(row.type, row.status) for row in rows] == [("status-update", "in-progress")]
    assert runtime(proxy).webhook_stats.duplicates - before == 11
    record = on_server(proxy, runtime(proxy).ledger.get_call(call_id))
    assert record.status == "in-progress"
