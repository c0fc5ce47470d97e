"""The action limit across replicas: two proxies (two runtimes, two apps, each with its own
engine and connections) on one ledger database, as two `serve` processes or machines would be.
A burst of actions sent to both at once is held to `admin.actions_per_minute` in total, not
per replica: each action reserves its slot (a pending audit row) in the shared database before
it runs. On SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.support.console import admin_proxy
from tests.support.http import assert_envelope
from tests.support.proxy import ProxyFactory
from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.console.access import actor_for_hash
from vapi_proxy.testing import ServerThread

ACTIONS_MESSAGE = "Too many admin actions in the last minute; wait a moment."
LIMIT = 3
SENDERS_PER_REPLICA = 6


def _replicas(
    make_proxy: ProxyFactory, url: str, admin_key: str
) -> tuple[ServerThread, ServerThread]:
    def shared(config: dict[str, Any]) -> None:
        config["ledger"] = {"url": url, "auto_migrate": True}
        config["limits"] = {"backend": "memory://"}

    # The first replica migrates the database before the second starts.
    one = admin_proxy(make_proxy, admin_key, shared, actions_per_minute=LIMIT)
    two = admin_proxy(make_proxy, admin_key, shared, actions_per_minute=LIMIT)
    return one, two


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _burst(
    servers: tuple[ServerThread, ServerThread], send: Callable[[ServerThread, int], httpx.Response]
) -> list[httpx.Response]:
    """`SENDERS_PER_REPLICA` requests to each replica, all released at once."""
    total = SENDERS_PER_REPLICA * len(servers)
    start = threading.Barrier(total, timeout=30)

    def one(n: int) -> httpx.Response:
        start.wait()
        return send(servers[n % len(servers)], n)

    with ThreadPoolExecutor(total) as pool:
        return list(pool.map(one, range(total)))


def _refused(reply: httpx.Response) -> None:
    body = assert_envelope(reply, 429)
    assert body["message"] == ACTIONS_MESSAGE
    assert reply.headers["retry-after"] == "60"
    assert "default-src 'none'" in reply.headers["content-security-policy"]


def _audit(server: ServerThread, key: str) -> list[dict[str, Any]]:
    reply = httpx.get(server.url + "/admin/api/audit", headers=_bearer(key), timeout=10)
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def test_a_burst_on_two_replicas_is_held_to_the_limit_in_total(
    make_proxy: ProxyFactory, shared_ledger: str
) -> None:
    """Twelve blocks at once, six to each replica, with room for three: three are done in
    total (not three per replica); the rest are refused before anything happens and leave no
    trace in the blocks or the audit trail."""
    admin_key = generate_key()
    servers = _replicas(make_proxy, shared_ledger, admin_key)

    def block(server: ServerThread, n: int) -> httpx.Response:
        return httpx.post(
            server.url + "/admin/api/blocks",
            json={"identity": f"api_key:burst-{n}", "reason": "burst"},
            headers=_bearer(admin_key),
            timeout=30,
        )

    replies = _burst(servers, block)
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [201] * LIMIT + [429] * (len(replies) - LIMIT), [r.text for r in replies]
    for reply in replies:
        if reply.status_code == 429:
            _refused(reply)
    done = {r.json()["block"]["identity"] for r in replies if r.status_code == 201}

    # Both replicas see the same three blocks, and the shared trail lists exactly those three,
    # each completed (none left pending), none of the refused requests.
    for server in servers:
        listed = httpx.get(server.url + "/admin/api/blocks", headers=_bearer(admin_key))
        assert {b["identity"] for b in listed.json()["items"]} == done
    trail = _audit(servers[1], admin_key)
    assert sorted((r["action"], r["target"], r["outcome"]) for r in trail) == sorted(
        ("block", identity, "ok") for identity in done
    )
    refused_ids = {r.headers["x-request-id"] for r in replies if r.status_code == 429}
    assert not refused_ids & {r["requestId"] for r in trail}

    # The window is full on both replicas for this operator.
    for server in servers:
        again = httpx.post(
            server.url + "/admin/api/unblock",
            json={"identity": "api_key:burst-0"},
            headers=_bearer(admin_key),
        )
        _refused(again)


def test_a_mixed_burst_on_two_replicas_is_held_to_the_limit_in_total(
    make_proxy: ProxyFactory, shared_ledger: str
) -> None:
    """Every kind of action shares the one budget across replicas: sign-ins, blocks, unblocks
    and CSV exports sent at once to both replicas; three are done in total."""
    admin_key = generate_key()
    servers = _replicas(make_proxy, shared_ledger, admin_key)
    admin = _bearer(admin_key)

    def act(server: ServerThread, n: int) -> httpx.Response:
        kind = (n // 2) % 4
        if kind == 0:
            return httpx.post(
                server.url + "/admin/api/session", json={"key": admin_key}, timeout=30
            )
        if kind == 1:
            body = {"identity": f"api_key:mixed-{n}", "reason": "mixed"}
            return httpx.post(
                server.url + "/admin/api/blocks", json=body, headers=admin, timeout=30
            )
        if kind == 2:
            body = {"identity": f"api_key:never-{n}"}  # not blocked: a "noop" that still counts
            return httpx.post(
                server.url + "/admin/api/unblock", json=body, headers=admin, timeout=30
            )
        return httpx.get(server.url + "/admin/api/usage.csv", headers=admin, timeout=30)

    replies = _burst(servers, act)
    admitted = [r for r in replies if r.status_code != 429]
    assert len(admitted) == LIMIT, [(r.status_code, r.text) for r in replies]
    assert all(r.status_code in (200, 201, 404) for r in admitted), [r.text for r in admitted]
    for reply in replies:
        if reply.status_code == 429:
            _refused(reply)
    mine = actor_for_hash(hash_key(admin_key))
    trail = [r for r in _audit(servers[0], admin_key) if r["actor"] == mine]
    assert len(trail) == LIMIT
    assert {r["requestId"] for r in trail} == {r.headers["x-request-id"] for r in admitted}
    assert "pending" not in {r["outcome"] for r in trail}
