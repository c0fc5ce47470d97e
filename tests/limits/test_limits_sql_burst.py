"""A burst larger than the store's connection pool queues for a connection and is counted
exactly: the store deadline (`timeout_seconds`) measures the store's own answer, not the queue
in front of it. (PostgreSQL and Redis: both stores pool their connections.)

The real server sits behind a loopback proxy that delays every reply by a fixed lag. That
puts a floor under each operation, so the queue behind the pool is long by construction, not
by the machine's load: with the pool's connections all busy, the last reserve of the burst
waits for a connection more than twice the deadline, while one reserve takes a fraction of it.

Every reserve of the burst is the same caller's, so inside PostgreSQL they also queue for the
same counter row. A reservation is one statement that commits on its own: the row is locked for
the function's run, not across a round trip to the client and back (with BEGIN and COMMIT of
their own, ten connections queued for the lock each held it a whole lagged round trip, and a
reserve waited up to a second for it: the deadline then failed a burst it should admit).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.limits import HANG_GUARD, REQ, WHO, FakeClock
from tests.support.services import postgres_url, redis_url
from vapi_proxy.errors import ServiceUnavailableError
from vapi_proxy.limits import Limiter, LimitsSettings, Reservation, create_limiter

TIMEOUT = 1.0  # the store deadline under test
# (backend, its pool's connections, reserves in the burst, lag added to each reply). A warm
# reserve is one round trip on either store, so the last reserve's wait for a connection is at
# least 2400 / 10 * 0.01 = 2.4 s and 2560 / 64 * 0.05 = 2 s: over twice TIMEOUT, whatever the
# machine's load. A reserve itself is a fraction of TIMEOUT: one lagged round trip, or about
# twenty when it opens a connection (PostgreSQL's pool closes its overflow connections when
# they come back to a full pool, and the burst opens them again).
CASES = [("postgres", 10, 2400, 0.01), ("redis", 64, 2560, 0.05)]


@dataclass
class LaggingProxy:
    """Forwards loopback TCP to `target`, holding each chunk the server sends for `lag`."""

    target: tuple[str, int]
    lag: float = 0.0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    sent: int = 0
    """How many times the client's bytes were passed on to the server."""
    refuse: bool = False
    """Close new connections at once (the server's port is closed, as it were)."""
    refused: int = 0

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lag: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                self.sent += not lag
                if lag and self.lag:
                    await asyncio.sleep(self.lag)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            self.refused += 1
            c_writer.close()
            return
        s_reader, s_writer = await asyncio.open_connection(*self.target)
        self.writers += [c_writer, s_writer]
        for task in (
            asyncio.create_task(self._pump(c_reader, s_writer, lag=False)),
            asyncio.create_task(self._pump(s_reader, c_writer, lag=True)),
        ):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


async def through_proxy(url: str) -> AsyncIterator[tuple[str, LaggingProxy]]:
    parts = urlsplit(url)
    proxy = LaggingProxy((parts.hostname or "127.0.0.1", parts.port or 0))
    server = await asyncio.start_server(proxy.accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    try:
        yield urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{port}")), proxy
    finally:
        server.close()
        for writer in proxy.writers:
            writer.close()
        for task in list(proxy.tasks):
            task.cancel()
        await asyncio.gather(*proxy.tasks, return_exceptions=True)
        await server.wait_closed()


@contextlib.asynccontextmanager
async def proxied_limiter(
    target: str, rules: Sequence[object], clock: FakeClock, *, timeout: float = 5
) -> AsyncIterator[tuple[Limiter, LaggingProxy]]:
    """A limiter on `target` through a `LaggingProxy`, in a namespace of its own."""
    async for url, proxy in through_proxy(target):
        settings = LimitsSettings(
            backend=url, namespace=f"t{uuid.uuid4().hex[:10]}", rules=rules, timeout_seconds=timeout
        )
        limiter = create_limiter(settings, clock=clock)
        try:
            yield limiter, proxy
        finally:
            await limiter.aclose()


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
async def lagging(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[str, LaggingProxy, tuple[int, int, float]]]:
    backend, *case = request.param
    url = postgres_url() if backend == "postgres" else redis_url()
    async for proxied, proxy in through_proxy(url):
        yield proxied, proxy, tuple(case)  # type: ignore[misc]


async def test_a_burst_beyond_the_pool_is_admitted_and_counted_exactly(
    lagging: tuple[str, LaggingProxy, tuple[int, int, float]], clock: FakeClock
) -> None:
    url, proxy, (pool, n, lag) = lagging
    rules = [{"name": "q", "quota": {"per_day": pool + n + 1}}]
    settings = LimitsSettings(
        backend=url, namespace=f"b{uuid.uuid4().hex[:10]}", rules=rules, timeout_seconds=TIMEOUT
    )
    limiter = create_limiter(settings, clock=clock)
    try:
        async with asyncio.timeout(HANG_GUARD):
            # Tables, scripts and prepared statements in place, connections open, before the
            # lag starts: the burst then costs round trips, not set-up.
            await limiter.health()
            warm = await asyncio.gather(*(limiter.reserve(REQ) for _ in range(pool)))
            assert not [r for r in warm if r.degraded]
            proxy.lag = lag
            results = await asyncio.gather(
                *(limiter.reserve(REQ) for _ in range(n)), return_exceptions=True
            )
            proxy.lag = 0.0
            others = [r for r in results if not isinstance(r, Reservation)]
            assert others == [], f"{len(others)} of {n} refused, first: {others[0]!r}"
            assert not [r for r in results if isinstance(r, Reservation) and r.degraded]
            usage = {(u.rule, u.what, u.kind): u for u in await limiter.usage(WHO, "support")}
        assert usage[("q", "quota", "call")].used == pool + n
    finally:
        await limiter.aclose()


async def test_a_postgresql_reservation_and_its_commit_are_one_round_trip_each(
    clock: FakeClock,
) -> None:
    """Each is one statement sent once: no BEGIN and COMMIT of its own, which would hold the
    caller's counter rows locked across two more round trips (see the module's docstring)."""
    rules = [{"name": "q", "quota": {"per_day": 100}}, {"name": "c", "concurrency": 50}]
    async with proxied_limiter(postgres_url(), rules, clock) as (limiter, proxy):
        async with asyncio.timeout(HANG_GUARD):
            await limiter.health()
            # Every pooled connection has prepared the statements (a first use adds a
            # round trip to prepare): the pool hands its idle connections out in turn.
            for i in range(12):
                await limiter.commit(await limiter.reserve(REQ), f"warm-{i}")
            for i in range(5):
                before = proxy.sent
                reservation = await limiter.reserve(REQ)
                assert proxy.sent - before == 1
                before = proxy.sent
                await limiter.commit(reservation, f"call-{i}")
                assert proxy.sent - before == 1
            usage = {(u.rule, u.what): u for u in await limiter.usage(WHO, "support")}
        assert usage[("q", "quota")].used == 17
        assert usage[("c", "concurrency")].used == 17


async def test_a_postgresql_release_and_settlement_hold_no_lock_across_a_round_trip(
    clock: FakeClock,
) -> None:
    """Each is two statements that commit on their own: the reservation read, then one call
    applying the decision if the reservation is still as read. Neither holds the caller's
    counter rows while the client is asked (a BEGIN ... COMMIT would, for a round trip)."""
    rules = [
        {"name": "q", "quota": {"per_day": 100}},
        {"name": "c", "concurrency": 50},
        {"name": "b", "budget": {"minutes_per_day": 1000}},
    ]
    async with proxied_limiter(postgres_url(), rules, clock) as (limiter, proxy):
        async with asyncio.timeout(HANG_GUARD):
            await limiter.health()
            for i in range(12):  # every pooled connection prepares the statements
                await limiter.commit(await limiter.reserve(REQ), f"warm-{i}")
                await limiter.settle(f"warm-{i}", duration_seconds=60, cost_usd=None)
                await limiter.release(await limiter.reserve(REQ))
            for i in range(5):
                reservation = await limiter.reserve(REQ)
                before = proxy.sent
                await limiter.release(reservation)
                assert proxy.sent - before == 2
                await limiter.commit(await limiter.reserve(REQ), f"call-{i}")
                before = proxy.sent
                await limiter.settle(f"call-{i}", duration_seconds=30, cost_usd=None)
                assert proxy.sent - before == 2
            usage = {(u.rule, u.what): u for u in await limiter.usage(WHO, "support")}
        # 12 + 5 settled calls; the released reservations gave everything back.
        assert usage[("q", "quota")].used == 17
        assert usage[("c", "concurrency")].used == 0
        assert usage[("b", "minutes")].used == 12 + 5 * 0.5


async def test_postgresql_settlements_racing_on_one_call_count_once(clock: FakeClock) -> None:
    """Vapi's status-update `ended` (no cost yet), its end-of-call-report (with cost) and a
    redelivery of either may arrive together: each decides from the reservation as read, and
    the ones that read it before another changed it decide again under its lock. The minutes
    are trued up once, whichever way they interleave."""
    rules = [
        {"name": "b", "budget": {"minutes_per_day": 10_000, "usd_per_day": 1_000}},
        {"name": "c", "concurrency": 9},
    ]
    calls = 10
    async with proxied_limiter(postgres_url(), rules, clock) as (limiter, proxy):
        async with asyncio.timeout(HANG_GUARD):
            for i in range(calls):
                await limiter.commit(await limiter.reserve(REQ), f"race-{i}")
                # The lag makes the three reads overlap: each reads the call unsettled.
                proxy.lag = 0.02
                # 60 s held; the call ended after 30 s, reported three ways at once.
                await asyncio.gather(
                    limiter.settle(f"race-{i}", duration_seconds=30, cost_usd=None),
                    limiter.settle(f"race-{i}", duration_seconds=30, cost_usd=0.25),
                    limiter.settle(f"race-{i}", duration_seconds=30, cost_usd=0.25),
                )
                proxy.lag = 0.0
            usage = {(u.rule, u.what): u for u in await limiter.usage(WHO, "support")}
        assert usage[("b", "minutes")].used == calls * 0.5
        assert usage[("b", "usd")].used == calls * 0.25
        assert usage[("c", "concurrency")].used == 0


@pytest.mark.parametrize("backend", ["postgres", "redis"])
async def test_a_reservation_refused_for_its_late_answer_is_given_back(
    backend: str, clock: FakeClock
) -> None:
    """The store ran the reservation, but its answer came after the deadline: the caller is
    refused (fail closed), so the reservation is withdrawn once the store answers again. The
    caller's quota and concurrency slot are as if it had never been asked."""
    rules = [{"name": "q", "quota": {"per_day": 2}}, {"name": "c", "concurrency": 1}]
    target = postgres_url() if backend == "postgres" else redis_url()
    async with proxied_limiter(target, rules, clock, timeout=0.5) as (limiter, proxy):
        async with asyncio.timeout(HANG_GUARD):
            await limiter.release(await limiter.reserve(REQ))  # set up, connected
            proxy.lag = 1.5
            with pytest.raises(ServiceUnavailableError):
                await limiter.reserve(REQ)
            proxy.lag = 0.0
            # Counted in the store meanwhile (its answer is what came late)...
            usage = {u.rule: u.used for u in await limiter.usage(WHO, "support")}
            assert usage == {"q": 1, "c": 1}
            # ...and given back once the store had its deadline to finish.
            while usage != {"q": 0, "c": 0}:
                await asyncio.sleep(0.05)
                usage = {u.rule: u.used for u in await limiter.usage(WHO, "support")}
            await limiter.reserve(REQ)


@pytest.mark.parametrize("backend", ["postgres", "redis"])
async def test_a_late_reservation_is_given_back_when_the_store_is_back(
    backend: str, clock: FakeClock
) -> None:
    """The first tries to give the reservation back find the store unreachable: a later try,
    once it is back, does."""
    rules = [{"name": "c", "concurrency": 1}]
    target = postgres_url() if backend == "postgres" else redis_url()
    async with proxied_limiter(target, rules, clock, timeout=0.5) as (limiter, proxy):
        async with asyncio.timeout(HANG_GUARD):
            await limiter.release(await limiter.reserve(REQ))
            proxy.lag = 1.5
            with pytest.raises(ServiceUnavailableError):
                await limiter.reserve(REQ)
            proxy.lag, proxy.refuse = 0.0, True  # the late answer was lost with the store
            while not proxy.refused:
                await asyncio.sleep(0.05)
            proxy.refuse = False
            while True:
                # The connection the refusing store just closed may not be known as closed yet:
                # a read on it fails once (no command is sent twice), and the next one reconnects.
                with contextlib.suppress(ServiceUnavailableError):
                    if [u.used for u in await limiter.usage(WHO, "support")] == [0]:
                        break
                await asyncio.sleep(0.05)
            await limiter.reserve(REQ)
