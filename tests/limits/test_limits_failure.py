"""With the store unreachable or stopped, each rule fails closed (503) or open (admit uncounted)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.limits import HANG_GUARD, REQ, WHO, FakeClock
from tests.support.redis_server import RedisServer
from tests.support.services import closed_port
from vapi_proxy.errors import ServiceUnavailableError
from vapi_proxy.limits import LimitsSettings, create_limiter


def unreachable(backend: str, tmp_path: Path) -> str:
    port = closed_port()
    return {
        "sqlite": f"sqlite:///{tmp_path}/missing-dir/limits.db",
        "postgres": f"postgresql://postgres@127.0.0.1:{port}/postgres",
        "redis": f"redis://127.0.0.1:{port}/0",
    }[backend]


def settings(url: str, rules: list[dict[str, Any]], **kw: Any) -> LimitsSettings:
    kw.setdefault("timeout_seconds", 1.0)
    return LimitsSettings(backend=url, rules=rules, **kw)


QUOTA = [{"name": "q", "quota": {"per_day": 5}, "concurrency": 2}]


def causes(error: BaseException) -> list[BaseException]:
    """`error` and what it was raised from, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "redis"])
async def test_fail_closed_by_default(backend: str, tmp_path: Path, clock: FakeClock) -> None:
    limiter = create_limiter(settings(unreachable(backend, tmp_path), QUOTA), clock=clock)
    try:
        async with asyncio.timeout(HANG_GUARD):
            with pytest.raises(ServiceUnavailableError) as info:
                await limiter.reserve(REQ)
        # Refused because the store refused (nothing listens; the folder is missing), not
        # after waiting out a deadline: an unreachable store costs no timeout.
        assert not [e for e in causes(info.value) if isinstance(e, TimeoutError)], causes(
            info.value
        )
        assert info.value.status_code == 503
        assert "cannot be checked right now" in str(info.value.message)
        health = await limiter.health()
        assert not health.ok
        assert health.detail
        assert health.failure_mode == "closed"
        with pytest.raises(ServiceUnavailableError):
            await limiter.settle("c1", duration_seconds=1, cost_usd=0)
        with pytest.raises(ServiceUnavailableError):
            await limiter.expire()
    finally:
        await limiter.aclose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "redis"])
async def test_fail_open_admits_uncounted(backend: str, tmp_path: Path, clock: FakeClock) -> None:
    limiter = create_limiter(
        settings(unreachable(backend, tmp_path), QUOTA, failure_mode="open"), clock=clock
    )
    try:
        for _ in range(10):  # beyond both the quota and the concurrency
            r = await limiter.reserve(REQ)
            assert r.degraded
            assert r.holds == ()
            await limiter.commit(r, "c1")
            await limiter.release(r)
        assert (await limiter.health()).failure_mode == "open"
    finally:
        await limiter.aclose()


@pytest.mark.parametrize(
    ("modes", "admitted"),
    [(("open", "open"), True), (("open", "closed"), False), (("open", None), False)],
)
async def test_failure_mode_per_rule(
    modes: tuple[str | None, str | None], admitted: bool, tmp_path: Path, clock: FakeClock
) -> None:
    rules = [
        {"name": "a", "quota": {"per_day": 1}, "failure_mode": modes[0]},
        {"name": "b", "rate": {"per_second": 1}, "failure_mode": modes[1]},
    ]
    url = unreachable("redis", tmp_path)
    limiter = create_limiter(settings(url, rules), clock=clock)
    try:
        if admitted:
            assert (await limiter.reserve(REQ)).degraded
        else:
            with pytest.raises(ServiceUnavailableError):
                await limiter.reserve(REQ)
    finally:
        await limiter.aclose()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis of this test's own, so the test can stop it mid-way."""
    server = RedisServer(tmp_path)
    try:
        yield server.url, server.proc
    finally:
        server.proc.kill()
        server.proc.wait(timeout=10)


async def test_redis_stopped_mid_way_fails_closed_and_health_says_so(
    own_redis: tuple[str, subprocess.Popen[bytes]], clock: FakeClock
) -> None:
    url, proc = own_redis
    ns = f"t{uuid.uuid4().hex[:8]}"
    limiter = create_limiter(settings(url, QUOTA, namespace=ns), clock=clock)
    try:
        r = await limiter.reserve(REQ)
        assert not r.degraded
        assert (await limiter.health()).ok
        proc.terminate()
        proc.wait(timeout=10)
        with pytest.raises(ServiceUnavailableError):
            await limiter.reserve(REQ)
        health = await limiter.health()
        assert not health.ok
        assert health.backend.startswith("redis")
    finally:
        await limiter.aclose()


async def test_tables_from_an_older_version_are_named(tmp_path: Path, clock: FakeClock) -> None:
    import contextlib
    import sqlite3

    from vapi_proxy.limits.sql import LimitsSchemaError

    path = tmp_path / "old.db"
    # closing(): sqlite3's own context manager commits but leaves the connection open, which
    # Python 3.13 reports as a ResourceWarning (an error under this suite's filterwarnings).
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE limit_reservations (id TEXT PRIMARY KEY, state TEXT)")
    limiter = create_limiter(settings(f"sqlite:///{path}", QUOTA), clock=clock)
    try:
        with pytest.raises(LimitsSchemaError, match=r"lacks .*namespace.*older vapi-proxy"):
            await limiter.reserve(REQ)
    finally:
        await limiter.aclose()


async def test_sql_limiter_shares_the_ledgers_database(tmp_path: Path, clock: FakeClock) -> None:
    from vapi_proxy.ledger import Ledger
    from vapi_proxy.ledger.engine import Database

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    db = Database(url)
    ledger = Ledger(db)
    await ledger.start(auto_migrate=True)
    limiter = create_limiter(settings(url, QUOTA), clock=clock, database=db)
    r = await limiter.reserve(REQ)
    await limiter.commit(r, "c1")
    await ledger.record_call(call_id="c1", identity=WHO, profile="support", reservation_id=r.id)
    await limiter.aclose()  # the limiter does not close what it did not open
    assert (await ledger.get_call("c1")) is not None
    await ledger.aclose()
    with pytest.raises(ValueError, match="differs"):
        create_limiter(settings(f"sqlite:///{tmp_path / 'other.db'}", QUOTA), database=db)


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A loopback TCP server that accepts connections and never answers: a frozen store."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


# The store timeout bounds a whole operation: connecting, the command, and any reconnect or
# retry. Before, Redis took 2 s (a timeout, then a retry that timed out again) and PostgreSQL
# 10 s (its connect timeout was at least 10 s). Rather than time it, these check who ended the
# wait: the limits store's own deadline, set to the configured timeout, and not a driver's
# timeout or retry below it.
TIMEOUT = 1.0


def assert_ended_by_the_stores_deadline(limiter: Any, refusal: BaseException) -> None:
    assert limiter._store.deadline == TIMEOUT  # the configured timeout, over the whole operation
    store_error = refusal.__cause__
    assert store_error is not None and str(store_error).startswith("TimeoutError"), causes(refusal)
    timeout = store_error.__cause__
    # The builtin TimeoutError (redis-py has its own class of that name, for its socket timeouts),
    # raised by `asyncio.timeout` directly in the limits store's boundary: no driver frame
    # (asyncpg's connect timeout, redis-py's read timeout or retry) between the two.
    assert type(timeout) is TimeoutError, causes(refusal)
    frames = [Path(f.filename) for f in traceback.extract_tb(timeout.__traceback__)]
    assert frames[-1].parts[-2:] == ("asyncio", "timeouts.py"), frames
    assert all(
        f.parts[-3:-1] == ("vapi_proxy", "limits") or f.parts[-2:] == ("asyncio", "timeouts.py")
        for f in frames
    ), frames


@pytest.mark.parametrize("backend", ["postgres", "redis"])
async def test_a_frozen_store_is_refused_within_the_timeout(
    backend: str, silent_server: str, clock: FakeClock
) -> None:
    url = {
        "postgres": f"postgresql://postgres@{silent_server}/postgres",
        "redis": f"redis://{silent_server}/0",
    }[backend]
    limiter = create_limiter(settings(url, QUOTA, timeout_seconds=TIMEOUT), clock=clock)
    try:
        for call in (
            lambda: limiter.reserve(REQ),
            lambda: limiter.settle("c1", duration_seconds=1, cost_usd=0),
            lambda: limiter.usage(WHO, "support"),
        ):
            async with asyncio.timeout(HANG_GUARD):
                with pytest.raises(ServiceUnavailableError) as info:
                    await call()
            assert_ended_by_the_stores_deadline(limiter, info.value)
        async with asyncio.timeout(HANG_GUARD):
            health = await limiter.health()
        assert not health.ok
        assert health.detail is not None and health.detail.startswith("TimeoutError")
    finally:
        await limiter.aclose()


async def test_a_stopped_redis_process_is_refused_within_the_timeout(
    own_redis: tuple[str, subprocess.Popen[bytes]], clock: FakeClock
) -> None:
    """SIGSTOP the real redis-server after the pool is connected: the kernel still accepts
    reconnections, so only a deadline on the whole operation bounds the wait."""
    url, proc = own_redis
    ns = f"t{uuid.uuid4().hex[:8]}"
    limiter = create_limiter(settings(url, QUOTA, namespace=ns, timeout_seconds=TIMEOUT))
    try:
        assert not (await limiter.reserve(REQ)).degraded
        proc.send_signal(signal.SIGSTOP)
        try:
            async with asyncio.timeout(HANG_GUARD):
                with pytest.raises(ServiceUnavailableError) as info:
                    await limiter.reserve(REQ)
            assert_ended_by_the_stores_deadline(limiter, info.value)
        finally:
            proc.send_signal(signal.SIGCONT)
    finally:
        await limiter.aclose()


@pytest.mark.parametrize(("backend", "pool"), [("postgres", 10), ("redis", 64)])
async def test_a_frozen_store_refuses_a_burst_beyond_the_pool_by_one_deadline(
    backend: str, pool: int, silent_server: str, clock: FakeClock
) -> None:
    """The deadline starts once an operation has a connection, but a queue does not multiply
    it: of a burst three times the pool, the first wave is refused by the store's deadline and
    everyone queued behind it as soon as that wave has missed it, without trying the store
    again (before, each wave waited a whole deadline more: the last caller three)."""
    url = {
        "postgres": f"postgresql://postgres@{silent_server}/postgres",
        "redis": f"redis://{silent_server}/0",
    }[backend]
    limiter = create_limiter(settings(url, QUOTA, timeout_seconds=TIMEOUT), clock=clock)
    try:
        async with asyncio.timeout(HANG_GUARD):
            results = await asyncio.gather(
                *(limiter.reserve(REQ) for _ in range(3 * pool + 1)), return_exceptions=True
            )
        assert all(isinstance(r, ServiceUnavailableError) for r in results), results
        queued = "the store missed its deadline while this operation waited for a connection"
        by_deadline = []
        for refusal in results:
            assert isinstance(refusal, BaseException)
            if str(refusal.__cause__) == queued:
                continue
            assert_ended_by_the_stores_deadline(limiter, refusal)
            by_deadline.append(refusal)
        assert len(by_deadline) == pool
        # The store is tried again afterwards: a caller arriving now gets its own deadline.
        async with asyncio.timeout(HANG_GUARD):
            with pytest.raises(ServiceUnavailableError) as info:
                await limiter.reserve(REQ)
        assert_ended_by_the_stores_deadline(limiter, info.value)
    finally:
        await limiter.aclose()
