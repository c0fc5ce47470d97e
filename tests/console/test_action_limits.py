"""The console's rate limits: `admin.actions_per_minute` per operator, counted in the ledger
database (so across workers and replicas), and `admin.reads_per_minute` per operator, per
process. Past either one the operator gets a 429 in the usual envelope, and a refused action is
not carried out: nothing is stored, nothing changes, nothing reaches Vapi and the audit trail
lists only what was done. The limits are set small so every test stays a handful of requests.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.console import admin_proxy, ledger_status, signed_in
from tests.support.http import assert_envelope, post
from tests.support.proxy import ProxyFactory
from tests.support.services import fresh_postgres_database
from tests.support.webhooks import (
    HookProxyFactory,
    on_server,
    runtime,
    start_web_call,
    wait_for,
)
from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.console.access import AdminGate, actor_for_hash
from vapi_proxy.console.store import ConsoleStore
from vapi_proxy.edge.client_address import ClientAddressResolver
from vapi_proxy.errors import TooManyRequestsError, UpstreamError
from vapi_proxy.ledger.store import Ledger
from vapi_proxy.sandbox import ManualClock, RunningSandbox
from vapi_proxy.settings import AdminSettings
from vapi_proxy.testing import ServerThread

ACTIONS_MESSAGE = "Too many admin actions in the last minute; wait a moment."
READS_MESSAGE = "Too many admin API reads in the last minute; slow down."


@pytest.fixture(scope="module")
def admin_key() -> str:
    return generate_key()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _refused(reply: httpx.Response, message: str) -> dict[str, object]:
    """A rate-limit refusal: the envelope, its message, and the console's security headers."""
    body = assert_envelope(reply, 429)
    assert body["message"] == message
    assert body["error"] == "Too Many Requests"
    assert "default-src 'none'" in reply.headers["content-security-policy"]
    return body


def _audit(server: ServerThread, key: str) -> list[dict[str, Any]]:
    reply = httpx.get(server.url + "/admin/api/audit", headers=_bearer(key), timeout=10)
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def _blocks(server: ServerThread, key: str) -> dict[str, str]:
    reply = httpx.get(server.url + "/admin/api/blocks", headers=_bearer(key), timeout=10)
    assert reply.status_code == 200, reply.text
    return {b["identity"]: b["reason"] for b in reply.json()["items"]}


def _blocks_version(server: ServerThread) -> int:
    return on_server(server, ConsoleStore(runtime(server).ledger.database).blocks_version())


def _second_operator(key: str) -> Any:
    def patch(config: dict[str, Any]) -> None:
        config["admin"]["key_hashes"].append(hash_key(key))

    return patch


# --- the action limit over HTTP ----------------------------------------------------------------


def test_past_the_action_limit_a_block_or_unblock_is_refused_and_not_done(
    make_proxy: ProxyFactory, admin_key: str, user_key: str
) -> None:
    other_admin = generate_key()
    server = admin_proxy(make_proxy, admin_key, _second_operator(other_admin), actions_per_minute=3)
    url = server.url + "/admin/api"
    me = _bearer(admin_key)
    alice = {"identity": "api_key:alice"}
    done = [
        httpx.post(url + "/blocks", json={**alice, "reason": "one"}, headers=me),
        httpx.post(url + "/unblock", json=alice, headers=me),
        httpx.post(url + "/blocks", json={**alice, "reason": "three"}, headers=me),
    ]
    assert [r.status_code for r in done] == [201, 200, 201], [r.text for r in done]
    version = _blocks_version(server)

    # The fourth and fifth actions within the minute are refused before anything happens.
    unblock = httpx.post(url + "/unblock", json=alice, headers=me)
    _refused(unblock, ACTIONS_MESSAGE)
    assert unblock.headers["retry-after"] == "60"
    block = httpx.post(url + "/blocks", json={"identity": "api_key:bob", "reason": "x"}, headers=me)
    _refused(block, ACTIONS_MESSAGE)

    # Alice is still blocked (with the reason of the last block that was let through), Bob never
    # was, and the blocks version the replicas poll did not move.
    assert _blocks(server, admin_key) == {"api_key:alice": "three"}
    assert _blocks_version(server) == version
    assert_envelope(post(server, {"assistantId": "sales-coach"}, user_key), 403)

    # The trail holds exactly the three actions done, none of the refused ones.
    mine = actor_for_hash(hash_key(admin_key))
    trail = [r for r in _audit(server, admin_key) if r["actor"] == mine]
    assert [(r["action"], r["target"], r["outcome"]) for r in trail] == [
        ("block", "api_key:alice", "ok"),
        ("unblock", "api_key:alice", "ok"),
        ("block", "api_key:alice", "ok"),
    ]
    refused_ids = {unblock.headers["x-request-id"], block.headers["x-request-id"]}
    assert not refused_ids & {r["requestId"] for r in trail}

    # The limit is per operator: another admin key still acts, and that is audited as theirs.
    theirs = httpx.post(url + "/unblock", json=alice, headers=_bearer(other_admin))
    assert theirs.status_code == 200, theirs.text
    assert _blocks(server, admin_key) == {}
    latest = _audit(server, admin_key)[0]
    assert (latest["action"], latest["outcome"]) == ("unblock", "ok")
    assert latest["actor"] == actor_for_hash(hash_key(other_admin))


def test_a_csv_export_counts_as_an_action(make_proxy: ProxyFactory, admin_key: str) -> None:
    # docs/console.md and docs/api.md count exports as actions: they can read the whole ledger.
    server = admin_proxy(make_proxy, admin_key, actions_per_minute=2)
    url = server.url + "/admin/api/usage.csv"
    me = _bearer(admin_key)
    done = [httpx.get(url, headers=me, timeout=10) for _ in range(2)]
    assert [r.status_code for r in done] == [200, 200], [r.text for r in done]
    refused = httpx.get(url, params={"table": "users"}, headers=me, timeout=10)
    _refused(refused, ACTIONS_MESSAGE)
    mine = actor_for_hash(hash_key(admin_key))
    exports = [
        r for r in _audit(server, admin_key) if r["actor"] == mine and r["action"] == "export"
    ]
    assert len(exports) == 2


def test_past_the_action_limit_sign_out_and_sign_in_are_refused(
    make_proxy: ProxyFactory, admin_key: str
) -> None:
    """Through the console's own session: signing in is an action, signing out too. A refused
    sign-out leaves the session open; a refused sign-in hands out no cookie."""
    server = admin_proxy(make_proxy, admin_key, actions_per_minute=2)
    client, csrf = signed_in(server, admin_key)  # action 1
    try:
        made = client.post(
            "/admin/api/blocks",
            json={"identity": "api_key:alice", "reason": "two"},
            headers={"X-CSRF-Token": csrf},
        )
        assert made.status_code == 201, made.text  # action 2
        out = client.delete("/admin/api/session", headers={"X-CSRF-Token": csrf})
        _refused(out, ACTIONS_MESSAGE)
        assert "set-cookie" not in out.headers
        # Still signed in: the session was not deleted from the database.
        still = client.get("/admin/api/session")
        assert still.status_code == 200, still.text
        assert still.json()["csrfToken"] == csrf
    finally:
        client.close()
    again = httpx.post(server.url + "/admin/api/session", json={"key": admin_key})
    _refused(again, ACTIONS_MESSAGE)
    assert "set-cookie" not in again.headers
    trail = _audit(server, admin_key)
    assert [(r["action"], r["outcome"]) for r in trail] == [("block", "ok"), ("sign-in", "ok")]


def test_past_the_action_limit_a_live_call_is_not_ended(
    make_hook_proxy: HookProxyFactory,
    hook_sandbox: RunningSandbox,
    clock: ManualClock,
    admin_key: str,
    user_key: str,
) -> None:
    def patch(config: dict[str, Any]) -> None:
        config["admin"] = {"key_hashes": [hash_key(admin_key)], "actions_per_minute": 1}

    server = make_hook_proxy("hmac", patch)
    reply = start_web_call(server, user_key)
    assert reply.status_code == 201, reply.text
    call_id = reply.json()["id"]
    clock.advance(3)
    wait_for(lambda: ledger_status(server, call_id) == "in-progress")

    admin = _bearer(admin_key)
    made = httpx.post(
        server.url + "/admin/api/blocks",
        json={"identity": "api_key:bob", "reason": "uses the one action"},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    ended = httpx.post(server.url + f"/admin/api/calls/{call_id}/end", headers=admin)
    _refused(ended, ACTIONS_MESSAGE)

    # Nothing went to the call's control URL, and the call is still live.
    log = httpx.get(hook_sandbox.url + "/__sandbox/requests", timeout=5).json()
    assert [e for e in log if e["path"] == f"/{call_id}/control"] == []
    assert ledger_status(server, call_id) == "in-progress"
    trail = _audit(server, admin_key)
    assert [(r["action"], r["target"]) for r in trail] == [("block", "api_key:bob")]


def test_a_burst_of_concurrent_actions_is_held_to_the_limit(
    make_proxy: ProxyFactory, admin_key: str
) -> None:
    """Eight blocks sent at once by one operator with room for two: each reserves its slot in
    the database before it runs, so the first two hold the window before either is done.
    Exactly two are done; the others are refused and leave no trace. (Across replicas:
    test_action_limits_replicas.py.)"""
    server = admin_proxy(make_proxy, admin_key, actions_per_minute=2)
    senders = 8
    start = threading.Barrier(senders, timeout=10)

    def block(n: int) -> httpx.Response:
        start.wait()
        return httpx.post(
            server.url + "/admin/api/blocks",
            json={"identity": f"api_key:burst-{n}", "reason": "burst"},
            headers=_bearer(admin_key),
            timeout=10,
        )

    with ThreadPoolExecutor(senders) as pool:
        replies = list(pool.map(block, range(senders)))
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [201] * 2 + [429] * (senders - 2), [r.text for r in replies]
    for reply in replies:
        if reply.status_code == 429:
            _refused(reply, ACTIONS_MESSAGE)
    let_through = {r.json()["block"]["identity"] for r in replies if r.status_code == 201}
    assert set(_blocks(server, admin_key)) == let_through
    trail = _audit(server, admin_key)
    assert sorted(r["target"] for r in trail) == sorted(let_through)


# --- the action limit across replicas ----------------------------------------------------------


def test_the_action_limit_holds_across_two_replicas_on_one_ledger(
    make_proxy: ProxyFactory, postgres_ledger: str, admin_key: str
) -> None:
    def shared(config: dict[str, Any]) -> None:
        config["ledger"] = {"url": postgres_ledger, "auto_migrate": True}
        config["limits"] = {"backend": "memory://"}

    one = admin_proxy(make_proxy, admin_key, shared, actions_per_minute=3)
    two = admin_proxy(make_proxy, admin_key, shared, actions_per_minute=3)
    admin = _bearer(admin_key)
    alice = {"identity": "api_key:alice"}
    done = [
        httpx.post(one.url + "/admin/api/blocks", json={**alice, "reason": "one"}, headers=admin),
        httpx.post(two.url + "/admin/api/unblock", json=alice, headers=admin),
        httpx.post(one.url + "/admin/api/blocks", json={**alice, "reason": "three"}, headers=admin),
    ]
    assert [r.status_code for r in done] == [201, 200, 201], [r.text for r in done]

    # Replica two has let through one action itself; the other two, made on replica one, are
    # in the shared audit trail and count there as well.
    for server in (two, one):
        refused = httpx.post(server.url + "/admin/api/unblock", json=alice, headers=admin)
        _refused(refused, ACTIONS_MESSAGE)
    assert _blocks(two, admin_key) == {"api_key:alice": "three"}
    trail = _audit(two, admin_key)
    assert [(r["action"], r["outcome"]) for r in trail] == [
        ("block", "ok"),
        ("unblock", "ok"),
        ("block", "ok"),
    ]


async def test_the_action_window_is_the_last_minute_of_the_shared_audit_trail(
    db_url: str,
) -> None:
    """Two gates on two connections to one database (two replicas): actions replica A let
    through refuse the operator on replica B, which let none through itself; only the last
    minute counts, and only the operator's own actions."""
    settings = AdminSettings(key_hashes=[hash_key(generate_key())], actions_per_minute=2)
    ledger_a = Ledger.from_url(db_url)
    ledger_b = Ledger.from_url(db_url)
    await ledger_a.start(auto_migrate=True)
    await ledger_b.start(auto_migrate=False)
    try:
        store_a = ConsoleStore(ledger_a.database)
        gate_a = AdminGate(settings, resolver=ClientAddressResolver(()), store=store_a)
        gate_b = AdminGate(
            settings, resolver=ClientAddressResolver(()), store=ConsoleStore(ledger_b.database)
        )
        now = datetime(2026, 12, 1, 12, tzinfo=UTC)
        await store_a.audit(actor="key:ops", action="block", now=now - timedelta(seconds=90))
        for seconds in (30, 20):
            async with gate_a.action("key:ops", "block", now=now - timedelta(seconds=seconds)):
                pass

        with pytest.raises(TooManyRequestsError) as refused:
            async with gate_b.action("key:ops", "block", now=now):
                pytest.fail("a refused action must not run")
        assert refused.value.retry_after == 60
        async with gate_b.action("key:someone-else", "block", now=now):
            pass
        # 31 s later the action made 30 s ago has left the window: room for one more.
        async with gate_b.action("key:ops", "block", now=now + timedelta(seconds=31)):
            pass
        with pytest.raises(TooManyRequestsError):
            async with gate_a.action("key:ops", "block", now=now + timedelta(seconds=31)):
                pytest.fail("a refused action must not run")
        trail = await store_a.audit_log(actor="key:ops")
        assert [r["outcome"] for r in trail] == ["ok"] * 4
    finally:
        await ledger_b.aclose()
        await ledger_a.aclose()


async def _reserve_at_once(db_url: str) -> None:
    """Forty reservations of one operator at once, half through each of two engines on one
    database, with room for three: exactly three get a row, and no refused one wrote any."""
    ledger_a = Ledger.from_url(db_url)
    ledger_b = Ledger.from_url(db_url)
    await ledger_a.start(auto_migrate=True)
    await ledger_b.start(auto_migrate=False)
    try:
        stores = [ConsoleStore(ledger_a.database), ConsoleStore(ledger_b.database)]
        now = datetime(2026, 12, 1, 12, tzinfo=UTC)

        async def reserve(n: int) -> int | None:
            return await stores[n % 2].reserve_action(
                actor="key:ops", action="block", target=f"t{n}", limit=3, now=now
            )

        ids = await asyncio.gather(*(reserve(n) for n in range(40)))
        taken = [row for row in ids if row is not None]
        assert len(taken) == 3
        trail = await stores[0].audit_log(actor="key:ops")
        assert sorted(r["id"] for r in trail) == sorted(taken)
        assert {r["outcome"] for r in trail} == {"pending"}
    finally:
        await ledger_b.aclose()
        await ledger_a.aclose()


async def test_concurrent_reservations_on_two_replicas_take_at_most_the_limit(
    db_url: str,
) -> None:
    await _reserve_at_once(db_url)


async def test_reservations_hold_on_a_server_whose_default_isolation_is_repeatable_read() -> None:
    """PostgreSQL configured with `default_transaction_isolation = 'repeatable read'`: the
    reservation's transaction still reads what committed while it waited for the lock."""
    async with fresh_postgres_database(default_isolation="repeatable read") as url:
        await _reserve_at_once(url)


async def test_an_action_that_fails_keeps_its_slot_and_is_audited_as_failed(
    db_url: str,
) -> None:
    """An attempt counts whether or not it succeeds: a failure is recorded as `failed` with its
    error, and a reservation whose outcome was never recorded (its process stopped) stays
    `pending` and counts too."""
    ledger = Ledger.from_url(db_url)
    await ledger.start(auto_migrate=True)
    try:
        store = ConsoleStore(ledger.database)
        gate = AdminGate(
            AdminSettings(key_hashes=[hash_key(generate_key())], actions_per_minute=3),
            resolver=ClientAddressResolver(()),
            store=store,
        )
        with pytest.raises(UpstreamError):
            async with gate.action("key:ops", "end-call", target="call-1", client="127.0.0.1"):
                raise UpstreamError("Vapi did not end the call.")
        with pytest.raises(RuntimeError):
            async with gate.action("key:ops", "block", target="api_key:x", detail={"r": 1}):
                raise RuntimeError("boom")
        # A reservation nobody finished, as a process that stopped mid-action leaves it.
        assert await store.reserve_action(actor="key:ops", action="export", limit=3) is not None
        with pytest.raises(TooManyRequestsError):
            async with gate.action("key:ops", "sign-out"):
                pytest.fail("a refused action must not run")
        trail = await store.audit_log(actor="key:ops")
        assert [(r["action"], r["target"], r["outcome"], r["detail"]) for r in trail] == [
            ("export", None, "pending", None),
            ("block", "api_key:x", "failed", {"r": 1, "error": "RuntimeError"}),
            ("end-call", "call-1", "failed", {"error": "Vapi did not end the call."}),
        ]
        assert trail[2]["client"] == "127.0.0.1"
    finally:
        await ledger.aclose()


# --- the read limit ----------------------------------------------------------------------------


def test_past_the_read_limit_reads_are_refused(make_proxy: ProxyFactory, admin_key: str) -> None:
    other_admin = generate_key()
    server = admin_proxy(make_proxy, admin_key, _second_operator(other_admin), reads_per_minute=3)
    me = _bearer(admin_key)
    for path in ("/admin/api/blocks", "/admin/api/audit", "/admin/api/session"):
        reply = httpx.get(server.url + path, headers=me)
        assert reply.status_code == 200, (path, reply.text)
    # Every read route shares the one budget, whichever comes next.
    for path in ("/admin/api/calls/live", "/admin/api/blocks", "/admin/usage"):
        refused = httpx.get(server.url + path, headers=me)
        _refused(refused, READS_MESSAGE)
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Per operator: another admin key has its own budget.
    theirs = httpx.get(server.url + "/admin/api/blocks", headers=_bearer(other_admin))
    assert theirs.status_code == 200, theirs.text


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_read_window_slides_and_refusals_do_not_use_it_up(tmp_path: Any) -> None:
    ledger = Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    await ledger.start(auto_migrate=True)
    try:
        clock = _Clock()
        gate = AdminGate(
            AdminSettings(key_hashes=[hash_key(generate_key())], reads_per_minute=3),
            resolver=ClientAddressResolver(()),
            store=ConsoleStore(ledger.database),
            clock=clock,
        )
        for step in (0.0, 10.0, 10.0):
            clock.now += step
            gate.limit_reads("key:ops")
        clock.now += 10.0  # 30 s after the first read
        with pytest.raises(TooManyRequestsError) as refused:
            gate.limit_reads("key:ops")
        assert refused.value.retry_after == 30  # when the first read leaves the window
        for _ in range(3):  # refused reads are not counted: they do not push the wait back
            with pytest.raises(TooManyRequestsError):
                gate.limit_reads("key:ops")
        gate.limit_reads("key:someone-else")
        clock.now += 30.0  # the first read is a minute old: one read is free again
        gate.limit_reads("key:ops")
        with pytest.raises(TooManyRequestsError) as again:
            gate.limit_reads("key:ops")
        assert again.value.retry_after == 10
    finally:
        await ledger.aclose()
