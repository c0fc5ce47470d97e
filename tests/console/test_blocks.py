"""Blocking an identity: the next call or chat is a readable 403, on every replica within the
refresh interval; unblock; expiry; optionally its live calls are ended; all audited."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.console import admin_proxy
from tests.support.http import assert_envelope, post
from tests.support.proxy import ProxyFactory
from vapi_proxy.auth.api_key import generate_key
from vapi_proxy.auth.identity import Identity
from vapi_proxy.console.blocks import BlockedError, BlockList
from vapi_proxy.console.store import ConsoleStore
from vapi_proxy.ledger.store import Ledger


@pytest.fixture(scope="module")
def admin_key() -> str:
    return generate_key()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_blocked_identity_is_refused_then_unblocked(
    make_proxy: ProxyFactory, admin_key: str, user_key: str, other_key: str
) -> None:
    server = admin_proxy(make_proxy, admin_key)
    admin = _bearer(admin_key)
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201
    made = httpx.post(
        server.url + "/admin/api/blocks",
        json={"identity": "api_key:alice", "reason": "Card declined"},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    assert made.json()["block"]["createdBy"].startswith("key:")

    refused = assert_envelope(post(server, {"assistantId": "sales-coach"}, user_key), 403)
    assert refused["message"] == (
        "This account is blocked: Card declined. Contact the service's operator."
    )
    chat = post(server, {"assistantId": "support", "input": "hi"}, user_key, path="/chat")
    assert_envelope(chat, 403)
    # Someone else is not affected.
    assert post(server, {"assistantId": "support"}, other_key).status_code == 201

    listed = httpx.get(server.url + "/admin/api/blocks", headers=admin).json()["items"]
    assert [(b["identity"], b["active"]) for b in listed] == [("api_key:alice", True)]

    gone = httpx.post(
        server.url + "/admin/api/unblock", json={"identity": "api_key:alice"}, headers=admin
    )
    assert gone.status_code == 200, gone.text
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201
    again = httpx.post(
        server.url + "/admin/api/unblock", json={"identity": "api_key:alice"}, headers=admin
    )
    assert_envelope(again, 404)

    audit = httpx.get(server.url + "/admin/api/audit", headers=admin).json()["items"]
    rows = [(r["action"], r["target"], r["outcome"]) for r in audit]
    assert rows[:3] == [
        ("unblock", "api_key:alice", "noop"),
        ("unblock", "api_key:alice", "ok"),
        ("block", "api_key:alice", "ok"),
    ]
    assert all(r["client"] == "127.0.0.1" and r["at"] and r["requestId"] for r in audit[:3])
    assert audit[2]["detail"]["reason"] == "Card declined"


def test_block_input_is_checked(make_proxy: ProxyFactory, admin_key: str) -> None:
    server = admin_proxy(make_proxy, admin_key)
    url = server.url + "/admin/api/blocks"
    admin = _bearer(admin_key)
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    cases: list[Any] = [
        {},
        {"identity": "api_key:alice"},
        {"identity": "", "reason": "x"},
        {"identity": "api_key:alice", "reason": 7},
        {"identity": "api_key:alice", "reason": "x" * 501},
        {"identity": "api_key:alice", "reason": "x", "expiresAt": "soon"},
        {"identity": "api_key:alice", "reason": "x", "expiresAt": past},
        {"identity": "api_key:alice", "reason": "x", "endCalls": "yes"},
        ["api_key:alice"],
    ]
    for body in cases:
        assert_envelope(httpx.post(url, json=body, headers=admin), 400)
    assert_envelope(httpx.post(server.url + "/admin/api/unblock", json={}, headers=admin), 400)
    assert_envelope(httpx.get(url + "?all=1", headers=admin), 400)
    assert httpx.get(url, headers=admin).json()["items"] == []  # nothing was stored


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_block_reaches_another_replica_within_the_refresh_interval(db_url: str) -> None:
    """Two processes' block lists over one database: B sees A's block once its refresh
    interval has passed (never later), and sees the unblock the same way."""
    ledger = Ledger.from_url(db_url)
    await ledger.start(auto_migrate=True)
    try:
        store = ConsoleStore(ledger.database)
        clock = _Clock()
        replica_a = BlockList(store, refresh_seconds=2.0, clock=clock)
        replica_b = BlockList(store, refresh_seconds=2.0, clock=clock)
        alice = Identity(subject="alice", method="api_key")
        await replica_b.refuse_blocked(alice)  # B has loaded the (empty) list
        await store.block(alice.key, reason="abuse", expires_at=None, actor="key:test")
        replica_a.invalidate()
        with pytest.raises(BlockedError):
            await replica_a.refuse_blocked(alice)
        clock.now += 1.9
        await replica_b.refuse_blocked(alice)  # still inside B's interval: the cached list
        clock.now += 0.1
        with pytest.raises(BlockedError, match="blocked: abuse"):
            await replica_b.refuse_blocked(alice)
        await store.unblock(alice.key)
        clock.now += 2.0
        await replica_b.refuse_blocked(alice)
    finally:
        await ledger.aclose()


async def test_an_expired_block_lets_the_identity_back(db_url: str) -> None:
    ledger = Ledger.from_url(db_url)
    await ledger.start(auto_migrate=True)
    try:
        store = ConsoleStore(ledger.database)
        moment = datetime(2026, 12, 1, 12, tzinfo=UTC)
        now = [moment]
        blocks = BlockList(store, refresh_seconds=math.inf, now=lambda: now[0])
        alice = Identity(subject="alice", method="api_key")
        await store.block(
            alice.key, reason="cool-off", expires_at=moment + timedelta(hours=1), actor="k"
        )
        blocks.invalidate()
        with pytest.raises(BlockedError, match="until 2026-12-01T13:00:00Z: cool-off"):
            await blocks.refuse_blocked(alice)
        now[0] = moment + timedelta(hours=1)
        await blocks.refuse_blocked(alice)
    finally:
        await ledger.aclose()
