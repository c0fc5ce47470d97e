"""The simulator's real lifecycle webhooks, signed every way Vapi can, settle the ledger and the
limits of calls the proxy created."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from tests.support.webhooks import (
    VERIFIERS,
    HookProxyFactory,
    Keys,
    on_server,
    runtime,
    start_web_call,
    wait_for,
)
from vapi_proxy.ledger.schema import call_events
from vapi_proxy.sandbox import ManualClock, RunningSandbox
from vapi_proxy.testing import ServerThread


def ended_call(server: ServerThread, call_id: str) -> Any:
    def check() -> Any:
        record = on_server(server, runtime(server).ledger.get_call(call_id))
        if record is not None and record.status == "ended" and record.cost_usd is not None:
            return record
        return None

    return wait_for(check)


def deliveries(sandbox: RunningSandbox, call_id: str) -> list[dict[str, Any]]:
    log = httpx.get(sandbox.url + "/__sandbox/webhooks", timeout=5).json()
    return [entry for entry in log if entry["callId"] == call_id]


@pytest.mark.parametrize("credential", sorted(VERIFIERS))
def test_each_credential_kind_settles_the_call(
    make_hook_proxy: HookProxyFactory,
    hook_sandbox: RunningSandbox,
    clock: ManualClock,
    user_key: str,
    credential: str,
) -> None:
    proxy = make_hook_proxy(credential)
    reply = start_web_call(proxy, user_key)
    assert reply.status_code == 201, reply.text
    call_id = reply.json()["id"]
    clock.advance(35)
    record = ended_call(proxy, call_id)
    assert record.ended_reason == "customer-ended-call"
    assert record.duration_seconds == pytest.approx(30, abs=1)
    assert record.cost_usd == pytest.approx(0.05, abs=0.01)
    assert record.summary and call_id in record.summary
    stats = runtime(proxy).webhook_stats
    assert stats.rejected == {}
    sent = wait_for(lambda: [d for d in deliveries(hook_sandbox, call_id) if d["responseStatus"]])
    assert {d["responseStatus"] for d in sent} == {200}


def test_the_secret_never_reaches_the_browser_or_the_ledger(
    make_hook_proxy: HookProxyFactory, keys: Keys, user_key: str, hook_sandbox: RunningSandbox
) -> None:
    def send_header(config: dict[str, Any]) -> None:
        config["webhooks"]["verify"][0]["send_in_headers"] = True

    proxy = make_hook_proxy("bearer", send_header)
    reply = start_web_call(proxy, user_key, profile="demo")  # demo exposes monitor.listenUrl
    assert reply.status_code == 201
    assert keys.bearer not in reply.text
    log = httpx.get(hook_sandbox.url + "/__sandbox/requests", timeout=5).json()
    sent = [e["body"] for e in log if e["path"] == "/call/web"]
    server = sent[-1]["assistantOverrides"]["server"]
    assert server["headers"] == {"Authorization": f"Bearer {keys.bearer}"}
    assert server["credentialId"] == "bearer"


def test_a_wrong_secret_is_refused_with_401_and_counted(
    make_hook_proxy: HookProxyFactory,
    hook_sandbox: RunningSandbox,
    clock: ManualClock,
    user_key: str,
) -> None:
    def other_secret(config: dict[str, Any]) -> None:
        path = config["webhooks"]["verify"][0]["secret_file"]
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("not-the-secret-vapi-uses")

    proxy = make_hook_proxy("hmac", other_secret)
    call_id = start_web_call(proxy, user_key).json()["id"]
    clock.advance(35)
    sent = wait_for(
        lambda: [
            d
            for d in deliveries(hook_sandbox, call_id)
            if d["type"] == "end-of-call-report" and d["responseStatus"]
        ]
    )
    assert sent[0]["responseStatus"] == 401
    assert sent[0]["response"]["statusCode"] == 401
    assert "secret" not in str(sent[0]["response"]).lower()
    stats = runtime(proxy).webhook_stats
    assert stats.rejected["hmac_mismatch"] >= 2
    record = on_server(proxy, runtime(proxy).ledger.get_call(call_id))
    assert record is not None and record.status == "queued"


def test_an_ended_call_frees_its_slot_and_the_minutes_budget_gets_the_actual_duration(
    make_hook_proxy: HookProxyFactory, clock: ManualClock, user_key: str
) -> None:
    def limits(config: dict[str, Any]) -> None:
        config["limits"] = {
            "backend": "memory://",
            "rules": [
                {"name": "one-at-a-time", "concurrency": 1},
                # 10 min worst case held per call: a second call fits only once the first
                # settles at its real 30 s.
                {"name": "minutes", "budget": {"minutes_per_day": 15}},
            ],
        }

    proxy = make_hook_proxy("hmac", limits)
    first = start_web_call(proxy, user_key)
    assert first.status_code == 201
    refused = start_web_call(proxy, user_key)
    assert refused.status_code == 429
    clock.advance(35)
    ended_call(proxy, first.json()["id"])
    wait_for(lambda: runtime(proxy).webhook_stats.settled >= 2)
    second = start_web_call(proxy, user_key)
    assert second.status_code == 201, second.text
    usage = on_server(proxy, runtime(proxy).ledger.usage(identity_key="api_key:alice"))
    assert usage[0].ended == 1
    assert usage[0].cost_usd == pytest.approx(0.05, abs=0.01)


def test_transcripts_recordings_and_numbers_are_not_stored_by_default(
    make_hook_proxy: HookProxyFactory, clock: ManualClock, user_key: str
) -> None:
    proxy = make_hook_proxy("hmac")
    call_id = start_web_call(proxy, user_key).json()["id"]
    clock.advance(35)
    ended_call(proxy, call_id)

    async def payloads() -> list[Any]:
        db = runtime(proxy).ledger.database
        async with db.read() as conn:
            rows = await conn.execute(
                sa.select(call_events.c.payload).where(call_events.c.call_id == call_id)
            )
            return [row[0] for row in rows]

    stored = on_server(proxy, payloads())
    assert len(stored) >= 3
    text = orjson.dumps(stored).decode()
    for private in ("transcript", "messages", "simulated customer", '"customer":'):
        assert private not in text
    report = next(p for p in stored if p["type"] == "end-of-call-report")
    assert report["analysis"]["summary"].startswith("Simulated call")
    assert report["call"]["id"] == call_id


# --- crafted deliveries: order, duplicates, replay ------------------------------------------


def signed(keys: Keys, message: dict[str, Any], *, stamp: int | None = None) -> dict[str, Any]:
    body = orjson.dumps({"message": message})
    ts = str(int(time.time()) if stamp is None else stamp)
    mac = hmac.new(keys.hmac.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {
        "content": body,
        "headers": {"x-signature": mac, "x-timestamp": ts, "content-type": "application/json"},
    }


def deliver(proxy: ServerThread, request: dict[str, Any]) -> httpx.Response:
    return httpx.post(proxy.url + "/webhook", timeout=10, **request)


def status(call_id: str, value: str, at_ms: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "status-update",
        "status": value,
        "timestamp": at_ms,
        "call": {"id": call_id},
        **extra,
    }


def report(call_id: str, at_ms: int) -> dict[str, Any]:
    return {
        "type": "end-of-call-report",
        "timestamp": at_ms,
        "call": {"id": call_id},
        "endedReason": "customer-ended-call",
        "startedAt": "2026-11-27T00:00:00Z",
        "endedAt": "2026-11-27T00:01:30Z",
        "cost": 0.42,
        "analysis": {"summary": "Short call."},
        "artifact": {"transcript": "AI: hi", "recordingUrl": "https://example.com/r.wav"},
    }


def test_report_before_status_updates_and_duplicates(
    make_hook_proxy: HookProxyFactory, keys: Keys, user_key: str
) -> None:
    def limits(config: dict[str, Any]) -> None:
        config["limits"] = {
            "backend": "memory://",
            "rules": [{"name": "one", "concurrency": 1}],
        }

    proxy = make_hook_proxy("hmac", limits)
    call_id = start_web_call(proxy, user_key).json()["id"]
    assert start_web_call(proxy, user_key).status_code == 429
    now_ms = int(time.time() * 1000)
    first = signed(keys, report(call_id, now_ms + 5))
    assert deliver(proxy, first).status_code == 200
    assert deliver(proxy, first).status_code == 200  # Vapi retried: a duplicate
    for i, value in enumerate(["in-progress", "ended"]):
        late = signed(keys, status(call_id, value, now_ms + i, endedReason="silence-timed-out"))
        assert deliver(proxy, late).status_code == 200
    record = on_server(proxy, runtime(proxy).ledger.get_call(call_id))
    assert record.status == "ended"
    assert record.ended_reason == "customer-ended-call"  # the report wins over late updates
    assert record.cost_usd == pytest.approx(0.42)
    assert record.duration_seconds == pytest.approx(90)
    stats = runtime(proxy).webhook_stats
    assert stats.duplicates == 1
    # The slot came back with the report: the next call is admitted.
    assert start_web_call(proxy, user_key).status_code == 201


def test_replays_expired_stamps_and_tampering_are_refused(
    make_hook_proxy: HookProxyFactory, keys: Keys, user_key: str
) -> None:
    proxy = make_hook_proxy("hmac")
    call_id = start_web_call(proxy, user_key).json()["id"]
    now = int(time.time())
    old = signed(keys, status(call_id, "ended", now * 1000), stamp=now - 4 * 3600)
    reply = deliver(proxy, old)
    assert reply.status_code == 401
    assert reply.json()["message"] == "The webhook credential is missing or wrong."
    fresh = signed(keys, status(call_id, "in-progress", now * 1000))
    assert deliver(proxy, fresh).status_code == 200
    replayed = deliver(proxy, fresh)  # captured and replayed inside the window: no effect
    assert replayed.status_code == 200
    tampered = {**fresh, "content": fresh["content"].replace(b"in-progress", b"ended")}
    assert deliver(proxy, tampered).status_code == 401
    stats = runtime(proxy).webhook_stats
    assert stats.rejected == {"hmac_expired": 1, "hmac_mismatch": 1}
    assert stats.duplicates == 1
    record = on_server(proxy, runtime(proxy).ledger.get_call(call_id))
    assert record.status == "in-progress"


def test_malformed_and_oversized_bodies(
    make_hook_proxy: HookProxyFactory, keys: Keys, user_key: str
) -> None:
    def small(config: dict[str, Any]) -> None:
        config["webhooks"]["max_body_bytes"] = 2048

    proxy = make_hook_proxy("hmac", small)
    big = signed(keys, {"type": "conversation-update", "messages": ["x" * 4096]})
    assert deliver(proxy, big).status_code == 413
    body = b'{"message": "nope"}'
    ts = str(int(time.time()))
    mac = hmac.new(keys.hmac.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    bad = httpx.post(
        proxy.url + "/webhook",
        content=body,
        headers={"x-signature": mac, "x-timestamp": ts},
        timeout=5,
    )
    assert bad.status_code == 400
    assert set(bad.json()) == {"message", "error", "statusCode", "requestId"}


def test_unknown_calls_are_kept_and_flagged_and_attributed_ones_adopted(
    make_hook_proxy: HookProxyFactory, keys: Keys
) -> None:
    proxy = make_hook_proxy("hmac")
    now_ms = int(time.time() * 1000)
    stranger = signed(keys, status("not-ours", "ended", now_ms))
    assert deliver(proxy, stranger).status_code == 200
    assert on_server(proxy, runtime(proxy).ledger.get_call("not-ours")) is None
    attribution = {"profile": "sales-coach", "requestId": "rq-lost", "identity": "abcd" * 4}
    ours = report("lost-call", now_ms)
    ours["call"] = {
        "id": "lost-call",
        "type": "webCall",
        "assistantOverrides": {"metadata": {"vapiProxy": attribution}},
    }
    assert deliver(proxy, signed(keys, ours)).status_code == 200
    adopted = on_server(proxy, runtime(proxy).ledger.get_call("lost-call"))
    assert adopted is not None
    assert adopted.identity_key == "adopted:" + "abcd" * 4
    assert (adopted.profile, adopted.kind, adopted.status) == ("sales-coach", "web", "ended")
    assert adopted.cost_usd == pytest.approx(0.42)
    stats = runtime(proxy).webhook_stats
    assert (stats.unknown_calls, stats.adopted_calls) == (2, 1)
