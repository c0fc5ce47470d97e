"""The per-address sign-in limit: at most `admin.actions_per_minute` sign-in attempts without a
valid credential per client address per minute, counted in the ledger database, so across
workers and replicas. Past it a sign-in is refused with a 429 before its key is even checked,
the right key included, until the window has room again; other addresses are unaffected.

Counting and checking take turns per address (a lock in the shared database), so a burst of
wrong keys sent at once, to one proxy or to two replicas on one ledger, gets exactly the limit
checked (401) and the rest refused (429), not the limit per request in flight. The limits are
set small so every test stays a handful of requests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from tests.support.console import admin_proxy
from tests.support.http import assert_envelope
from tests.support.proxy import ProxyFactory
from tests.support.services import fresh_postgres_database
from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.console.access import AdminGate, actor_for_hash
from vapi_proxy.console.store import ConsoleStore
from vapi_proxy.edge.client_address import ClientAddressResolver
from vapi_proxy.errors import TooManyRequestsError, UnauthorizedError
from vapi_proxy.ledger.store import Ledger
from vapi_proxy.settings import AdminSettings
from vapi_proxy.testing import ServerThread

SIGN_INS_MESSAGE = "Too many failed sign-ins from this address; wait a minute."
LIMIT = 3
ATTACKER = "10.0.0.66"
NEIGHBOUR = "10.0.0.7"
ADMIN_KEY = generate_key()


# --- over HTTP: one proxy, two replicas --------------------------------------------------------


def _behind_a_trusted_proxy(ledger_url: str | None = None) -> Callable[[dict[str, Any]], None]:
    """Loopback is a trusted proxy, so `X-Forwarded-For` names the client address a test
    signs in from; the console answers 10.0.0.0/8 and loopback."""

    def patch(config: dict[str, Any]) -> None:
        config["auth"]["trusted_proxies"] = ["127.0.0.1/32"]
        config["admin"]["allowed_networks"] = ["10.0.0.0/8", "127.0.0.0/8"]
        if ledger_url is not None:
            config["ledger"] = {"url": ledger_url, "auto_migrate": True}
            config["limits"] = {"backend": "memory://"}

    return patch


def _sign_in(server: ServerThread, key: str, address: str) -> httpx.Response:
    return httpx.post(
        server.url + "/admin/api/session",
        json={"key": key},
        headers={"X-Forwarded-For": address},
        timeout=30,
    )


def _burst_of_wrong_keys(servers: list[ServerThread], per_server: int) -> list[httpx.Response]:
    """`per_server` wrong keys from `ATTACKER` to each server, all released at once."""
    total = per_server * len(servers)
    start = threading.Barrier(total, timeout=30)

    def one(n: int) -> httpx.Response:
        start.wait()
        return _sign_in(servers[n % len(servers)], f"wrong-{n}", ATTACKER)

    with ThreadPoolExecutor(total) as pool:
        return list(pool.map(one, range(total)))


def _refused(reply: httpx.Response) -> None:
    body = assert_envelope(reply, 429)
    assert body["message"] == SIGN_INS_MESSAGE
    assert reply.headers["retry-after"] == "60"
    assert "set-cookie" not in reply.headers
    assert "default-src 'none'" in reply.headers["content-security-policy"]


def _audit(server: ServerThread, key: str) -> list[dict[str, Any]]:
    reply = httpx.get(
        server.url + "/admin/api/audit",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def _held_to_the_limit(servers: list[ServerThread], replies: list[httpx.Response]) -> None:
    """Exactly `LIMIT` wrong keys were checked (401) and recorded as refused; every other one
    was refused with a 429 and left no trace."""
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [401] * LIMIT + [429] * (len(replies) - LIMIT), [r.text for r in replies]
    for reply in replies:
        if reply.status_code == 429:
            _refused(reply)
        else:
            assert assert_envelope(reply, 401)["message"] == "The admin key is not valid."
    checked = {r.headers["x-request-id"] for r in replies if r.status_code == 401}
    for server in servers:
        attempts = [r for r in _audit(server, ADMIN_KEY) if r["client"] == ATTACKER]
        assert (
            sorted((r["actor"], r["action"], r["outcome"]) for r in attempts)
            == [("-", "sign-in", "refused")] * LIMIT
        )
        assert {r["requestId"] for r in attempts} == checked


def _then_the_right_key_waits_and_neighbours_do_not(servers: list[ServerThread]) -> None:
    for server in servers:
        # The address has used its attempts: even the right key is refused, unchecked.
        _refused(_sign_in(server, ADMIN_KEY, ATTACKER))
        # Another address has its own budget: its wrong key is checked, its right key works.
        assert_envelope(_sign_in(server, "wrong", NEIGHBOUR), 401)
        signed = _sign_in(server, ADMIN_KEY, NEIGHBOUR)
        assert signed.status_code == 200, signed.text
        assert signed.json()["actor"] == actor_for_hash(hash_key(ADMIN_KEY))
    # Still nothing more from the attacker's address in the trail; the neighbour's refusals
    # and sign-ins are there.
    trail = _audit(servers[0], ADMIN_KEY)
    assert len([r for r in trail if r["client"] == ATTACKER]) == LIMIT
    neighbour = sorted((r["actor"], r["outcome"]) for r in trail if r["client"] == NEIGHBOUR)
    mine = actor_for_hash(hash_key(ADMIN_KEY))
    assert neighbour == sorted([("-", "refused"), (mine, "ok")] * len(servers))


def test_a_burst_of_wrong_keys_on_one_proxy_is_held_to_the_limit(
    make_proxy: ProxyFactory,
) -> None:
    """Ten wrong keys sent at once from one address with room for three: three are checked and
    refused (401), seven get a 429; then the right key from that address is refused too, while
    another address signs in."""
    server = admin_proxy(make_proxy, ADMIN_KEY, _behind_a_trusted_proxy(), actions_per_minute=LIMIT)
    replies = _burst_of_wrong_keys([server], 10)
    _held_to_the_limit([server], replies)
    _then_the_right_key_waits_and_neighbours_do_not([server])


def test_a_burst_of_wrong_keys_on_two_replicas_is_held_to_the_limit_in_total(
    make_proxy: ProxyFactory, shared_ledger: str
) -> None:
    """Twelve wrong keys at once from one address, six to each of two replicas (two apps, two
    engines) on one ledger, with room for three: three are checked in total, not three per
    replica; then the right key is refused on both, and another address signs in on both."""
    patch = _behind_a_trusted_proxy(shared_ledger)
    # The first replica migrates the database before the second starts.
    one = admin_proxy(make_proxy, ADMIN_KEY, patch, actions_per_minute=LIMIT)
    two = admin_proxy(make_proxy, ADMIN_KEY, patch, actions_per_minute=LIMIT)
    replies = _burst_of_wrong_keys([one, two], 6)
    _held_to_the_limit([one, two], replies)
    _then_the_right_key_waits_and_neighbours_do_not([one, two])


# --- the gate on two engines: turns, the window, what counts ------------------------------------


def _request(address: str = "127.0.0.1") -> Request:
    return Request({"type": "http", "headers": [], "client": (address, 1234)})


class _CountingGate(AdminGate):
    """A gate that counts how many admin keys it has compared."""

    checks = 0

    def check_key(self, key: str) -> str | None:
        self.checks += 1
        return super().check_key(key)


def _gate(ledger: Ledger, admin_key: str, limit: int, auth: Any = None) -> _CountingGate:
    settings = AdminSettings(
        key_hashes=[hash_key(admin_key)],
        actions_per_minute=limit,
        jwt_roles=["admin"] if auth is not None else [],
    )
    return _CountingGate(
        settings,
        resolver=ClientAddressResolver(()),
        store=ConsoleStore(ledger.database),
        auth=auth,
    )


async def _outcome(gate: AdminGate, key: str, address: str, now: datetime) -> str:
    """What one sign-in attempt gets: the actor, "401" or "429"."""
    try:
        return await gate.sign_in(key, _request(address), client=address, now=now)
    except UnauthorizedError:
        return "401"
    except TooManyRequestsError as refused:
        return "429" if (refused.message, refused.retry_after) == (SIGN_INS_MESSAGE, 60) else "?"


async def _attempts_at_once(db_url: str) -> None:
    """Forty wrong keys from one address at once, half through each of two engines on one
    database, with room for three: exactly three keys are compared at all, three refusals
    recorded; the others are 429s that wrote nothing."""
    admin_key = generate_key()
    ledger_a = Ledger.from_url(db_url)
    ledger_b = Ledger.from_url(db_url)
    await ledger_a.start(auto_migrate=True)
    await ledger_b.start(auto_migrate=False)
    try:
        gates = [_gate(ledger_a, admin_key, 3), _gate(ledger_b, admin_key, 3)]
        now = datetime(2026, 12, 1, 12, tzinfo=UTC)
        outcomes = await asyncio.gather(
            *(_outcome(gates[n % 2], f"wrong-{n}", ATTACKER, now) for n in range(40))
        )
        assert sorted(outcomes) == ["401"] * 3 + ["429"] * 37
        assert gates[0].checks + gates[1].checks == 3
        trail = await gates[0].store.audit_log()
        assert [(r["actor"], r["client"], r["outcome"]) for r in trail] == [
            ("-", ATTACKER, "refused")
        ] * 3
    finally:
        await ledger_b.aclose()
        await ledger_a.aclose()


async def test_attempts_at_once_on_two_engines_check_at_most_the_limit_of_keys(
    db_url: str,
) -> None:
    await _attempts_at_once(db_url)


async def test_attempts_hold_on_a_server_whose_default_isolation_is_repeatable_read() -> None:
    """PostgreSQL configured with `default_transaction_isolation = 'repeatable read'`: each
    attempt's transaction still counts what committed while it waited for the address's lock."""
    async with fresh_postgres_database(default_isolation="repeatable read") as url:
        await _attempts_at_once(url)


async def test_the_window_is_the_last_minute_and_a_right_key_neither_counts_nor_clears_it(
    db_url: str,
) -> None:
    """Two gates on one database (two replicas). Refusals on replica A hold the address back on
    replica B: its right key is refused without being compared, until the oldest refusal is a
    minute old. A successful sign-in takes no slot and gives none back. Another address, and
    an operator's own action limit, are apart from it."""
    admin_key = generate_key()
    operator = actor_for_hash(hash_key(admin_key))
    ledger_a = Ledger.from_url(db_url)
    ledger_b = Ledger.from_url(db_url)
    await ledger_a.start(auto_migrate=True)
    await ledger_b.start(auto_migrate=False)
    try:
        gate_a = _gate(ledger_a, admin_key, 2)
        gate_b = _gate(ledger_b, admin_key, 2)
        now = datetime(2026, 12, 1, 12, tzinfo=UTC)
        # A refusal 90 s ago has left the window.
        await gate_a.store.audit(
            actor="-",
            action="sign-in",
            outcome="refused",
            client=ATTACKER,
            now=now - timedelta(seconds=90),
        )
        assert await _outcome(gate_a, "wrong", ATTACKER, now - timedelta(seconds=30)) == "401"
        assert await _outcome(gate_a, admin_key, ATTACKER, now - timedelta(seconds=25)) == operator
        assert await _outcome(gate_a, "wrong", ATTACKER, now - timedelta(seconds=20)) == "401"

        checks = gate_b.checks
        assert await _outcome(gate_b, admin_key, ATTACKER, now) == "429"
        assert gate_b.checks == checks  # refused without comparing the key
        # Another address is unaffected, and so is the operator's own action limit.
        assert await _outcome(gate_b, "wrong", NEIGHBOUR, now) == "401"
        assert await _outcome(gate_b, admin_key, NEIGHBOUR, now) == operator
        async with gate_b.action(operator, "block", now=now):
            pass

        # 31 s later the refusal of 30 s ago has left the window: room for one attempt. The
        # right key takes it and leaves it free; the next wrong key fills it.
        later = now + timedelta(seconds=31)
        assert await _outcome(gate_b, admin_key, ATTACKER, later) == operator
        assert await _outcome(gate_a, "wrong", ATTACKER, later) == "401"
        assert await _outcome(gate_b, admin_key, ATTACKER, later) == "429"

        trail = await gate_a.store.audit_log()
        attempts = [(r["actor"], r["client"], r["outcome"]) for r in trail if r["actor"] == "-"]
        assert (
            attempts
            == [("-", ATTACKER, "refused"), ("-", NEIGHBOUR, "refused")]
            + [("-", ATTACKER, "refused")] * 3
        )
        # The two sign-ins wrote nothing under "-"; the operator's trail holds their action.
        assert [r["action"] for r in trail if r["actor"] == operator] == ["block"]
    finally:
        await ledger_b.aclose()
        await ledger_a.aclose()


class _SlowIdentityProvider:
    """An auth chain whose JWT verification waits until the test lets it answer: `verdicts`
    maps a token to the identity to return, or to the exception to raise."""

    def __init__(self, expected: int) -> None:
        self.go = asyncio.Event()
        self.all_waiting = asyncio.Event()
        self.expected = expected
        self.waiting = 0
        self.verdicts: dict[str, Any] = {}

    async def authenticate(self, authorization: str, peer: str, headers: Any) -> Any:
        self.waiting += 1
        if self.waiting >= self.expected:
            self.all_waiting.set()
        await self.go.wait()
        verdict = self.verdicts[authorization.removeprefix("Bearer ")]
        if isinstance(verdict, BaseException):
            raise verdict
        return verdict


async def test_a_jwt_being_verified_holds_its_slot_until_its_outcome_is_known(
    tmp_path: Path,
) -> None:
    """A JWT cannot be verified under the address's lock (the identity provider may have to be
    asked), so it first takes a `pending` slot. While two are verified, a third attempt from
    the address, even with the right admin key, is refused unchecked. Then the valid JWT's slot
    is given back, the invalid one's is kept as refused, and one whose check failed as
    failed."""
    admin_key = generate_key()
    ledger = Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    await ledger.start(auto_migrate=True)
    try:
        idp = _SlowIdentityProvider(expected=2)
        good, bad, broken = "a.good.jwt", "a.bad.jwt", "a.broken.jwt"
        idp.verdicts = {
            good: SimpleNamespace(method="jwt", roles={"admin"}, key="jwt:idp:ops"),
            bad: UnauthorizedError("The token is not valid."),
            broken: RuntimeError("the verifier broke"),
        }
        gate = _gate(ledger, admin_key, 2, auth=idp)
        now = datetime(2026, 12, 1, 12, tzinfo=UTC)
        first = asyncio.create_task(_outcome(gate, good, ATTACKER, now))
        second = asyncio.create_task(_outcome(gate, bad, ATTACKER, now))
        both = asyncio.create_task(idp.all_waiting.wait())
        await asyncio.wait({both, first, second}, return_when=asyncio.FIRST_COMPLETED)
        assert idp.all_waiting.is_set(), (first, second)
        pending = await gate.store.audit_log()
        assert [(r["actor"], r["outcome"]) for r in pending] == [("-", "pending")] * 2
        checks = gate.checks
        assert await _outcome(gate, admin_key, ATTACKER, now) == "429"
        assert gate.checks == checks

        idp.go.set()
        assert await first == "jwt:idp:ops"
        assert await second == "401"
        assert [r["outcome"] for r in await gate.store.audit_log()] == ["refused"]

        # One slot is free again: a check that breaks keeps it, as `failed`.
        with pytest.raises(RuntimeError):
            await gate.sign_in(broken, _request(), client=ATTACKER, now=now)
        assert await _outcome(gate, admin_key, ATTACKER, now) == "429"
        trail = await gate.store.audit_log()
        assert [(r["outcome"], r["detail"]) for r in trail] == [
            ("failed", {"error": "RuntimeError"}),
            ("refused", None),
        ]
    finally:
        await ledger.aclose()
