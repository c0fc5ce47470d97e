"""The embedded default (`ledger://` on a SQLite ledger): counts survive a restart, commits and
settlements ride on the ledger's writes, and an upgrade carries the SQL store's counts over."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.limits.test_limits_state import OLD_SNAPSHOT, PEOPLE, SNAPSHOT_RULES, START
from tests.support.limits import FakeClock
from vapi_proxy.auth.identity import Identity
from vapi_proxy.errors import ServiceUnavailableError, TooManyRequestsError
from vapi_proxy.ledger import Ledger, LedgerEvent, upgrade_async
from vapi_proxy.ledger.engine import Database
from vapi_proxy.ledger.schema import limit_log, limit_state
from vapi_proxy.limits import AdmissionRequest, Limiter, LimitsSettings, create_limiter
from vapi_proxy.limits.config import LimitRule
from vapi_proxy.limits.core import StoreLimiter, make_plan
from vapi_proxy.limits.embedded import EmbeddedStore, write_snapshot

ALICE = Identity(subject="alice", method="jwt")
RULES: list[dict[str, Any]] = [
    {
        "name": "mine",
        "rate": {"per_minute": 5},
        "quota": {"per_day": 3},
        "concurrency": 1,
        "budget": {"minutes_per_day": 10},
    }
]


def req(**kw: Any) -> AdmissionRequest:
    kw.setdefault("worst_case_seconds", 300)
    return AdmissionRequest(identity=ALICE, profile="support", **kw)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    store = Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    await store.start(auto_migrate=True)
    try:
        yield store
    finally:
        await store.aclose()


def embedded(ledger: Ledger, clock: FakeClock, rules: list[dict[str, Any]] = RULES) -> Limiter:
    return create_limiter(LimitsSettings(rules=rules), clock=clock, database=ledger.database)


TWO = [{**RULES[0], "concurrency": 2}]


async def used(limiter: Limiter) -> dict[str, float]:
    return {u.what: u.used for u in await limiter.usage(ALICE, "support") if u.kind == "call"}


def ended(call_id: str, seconds: float) -> LedgerEvent:
    return LedgerEvent(
        type="end-of-call-report",
        call_id=call_id,
        dedupe_key=f"end:{call_id}",
        status="ended",
        duration_seconds=seconds,
        cost_usd=0.01,
    )


async def test_the_default_is_embedded_in_the_ledger(ledger: Ledger, clock: FakeClock) -> None:
    limiter = embedded(ledger, clock)
    assert LimitsSettings().backend == "ledger://"
    assert isinstance(limiter, StoreLimiter)
    assert isinstance(limiter.store, EmbeddedStore)
    assert (await limiter.health()).ok
    await limiter.aclose()
    with pytest.raises(ValueError, match="needs the ledger's database"):
        create_limiter(LimitsSettings(rules=RULES))


async def test_counts_survive_a_restart(ledger: Ledger, clock: FakeClock) -> None:
    first = embedded(ledger, clock, TWO)
    r = await first.reserve(req())
    await first.commit(r, "c1")
    await ledger.record_call(call_id="c1", identity=ALICE, profile="support", reservation_id=r.id)
    await first.reserve(req(worst_case_seconds=0))  # never committed: held till it expires
    await first.aclose()

    second = embedded(ledger, clock, TWO)
    assert await used(second) == {
        "rate": 2, "quota": 2, "minutes": 5, "concurrency": 2
    }  # fmt: skip
    with pytest.raises(TooManyRequestsError, match="in progress"):
        await second.reserve(req())
    # The call started before the restart reports its end afterwards.
    await second.settle("c1", duration_seconds=60, cost_usd=0.01)
    assert (await used(second))["minutes"] == 1
    await second.aclose()


async def test_a_commit_rides_on_the_call_row(ledger: Ledger, clock: FakeClock) -> None:
    """One write per created call: the commit is written in the call row's transaction."""
    limiter = embedded(ledger, clock)
    r = await limiter.reserve(req())
    writes = 0
    db = ledger.database
    originals = {name: getattr(db, name) for name in ("run_write", "run_raw", "add")}

    def counting(original: Any) -> Any:
        def count(*args: Any) -> Any:
            nonlocal writes
            writes += 1
            return original(*args)

        return count

    for name, original in originals.items():
        setattr(db, name, counting(original))
    try:
        await limiter.commit(r, "c1")
        await ledger.record_call(
            call_id="c1", identity=ALICE, profile="support", reservation_id=r.id
        )
    finally:
        for name, original in originals.items():
            setattr(db, name, original)
    assert writes == 1
    async with ledger.database.read() as conn:
        entries = [
            json.loads(e) for (e,) in await conn.execute(sa.text("SELECT entry FROM limit_log"))
        ]
    assert ["c", r.id, "c1"] in entries
    await limiter.aclose()


async def test_the_ledger_settles_what_a_killed_worker_had_not_written(
    ledger: Ledger, clock: FakeClock
) -> None:
    """A worker killed after the webhook's event was stored but before its buffered
    settlement was written: the next start settles the call from its ledger row."""
    first = embedded(ledger, clock)
    r = await first.reserve(req())
    await first.commit(r, "c1")
    await ledger.record_call(call_id="c1", identity=ALICE, profile="support", reservation_id=r.id)
    await ledger.apply_events([(ended("c1", 120), ())])
    await first.settle("c1", duration_seconds=120, cost_usd=0.01)
    store = first.store  # type: ignore[attr-defined]
    store._buffer.clear()  # the kill: nothing buffered reaches the file
    ledger.database.detach(store)

    second = embedded(ledger, clock)
    assert await used(second) == {"rate": 1, "quota": 1, "minutes": 2, "concurrency": 0}
    await second.reserve(req())  # the slot is free
    await second.aclose()


async def test_workers_share_counts_through_the_file(tmp_path: Path, clock: FakeClock) -> None:
    """Two stores on one file, each with its own engine (as two processes have): each sees the
    other's admissions, releases and settlements."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a = create_limiter(LimitsSettings(backend=url, rules=RULES), clock=clock)
    b = create_limiter(LimitsSettings(backend=url, rules=RULES), clock=clock)
    r = await a.reserve(req())
    with pytest.raises(TooManyRequestsError, match="in progress"):
        await b.reserve(req())
    await a.release(r)
    r = await b.reserve(req())
    await b.commit(r, "c1")
    await b.settle("c1", duration_seconds=30, cost_usd=None)
    await b.aclose()  # writes what it buffered
    assert await used(a) == {"rate": 1, "quota": 1, "minutes": 0.5, "concurrency": 0}
    await a.reserve(req())
    await a.aclose()


async def test_compaction_keeps_every_count(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    many = [{"name": "q", "quota": {"per_day": 1000}, "concurrency": 1000}]
    a = create_limiter(LimitsSettings(backend=url, rules=many), clock=clock)
    b = create_limiter(LimitsSettings(backend=url, rules=many), clock=clock)
    await b.reserve(req())  # b is now behind everything a does next
    import vapi_proxy.limits.embedded as embedded_module

    for i in range(30):
        r = await a.reserve(req())
        if i % 2:
            await a.commit(r, f"c{i}")
    old = embedded_module.SNAPSHOT_ENTRIES, embedded_module.SNAPSHOT_KEEP_ENTRIES
    embedded_module.SNAPSHOT_ENTRIES = 10
    embedded_module.SNAPSHOT_KEEP_ENTRIES = 0  # b is behind the kept entries: it reloads
    try:
        await a.expire()  # folds the log into a snapshot
    finally:
        embedded_module.SNAPSHOT_ENTRIES, embedded_module.SNAPSHOT_KEEP_ENTRIES = old
    db = Database(url)
    async with db.read() as conn:
        left = (await conn.execute(sa.text("SELECT count(*) FROM limit_log"))).scalar_one()
    await db.aclose()
    assert left == 1
    # b missed entries now folded away: it reloads the snapshot and agrees with a.
    counts = {u.what: u.used for u in await b.usage(ALICE, "support")}
    assert counts == {"quota": 31, "concurrency": 31}
    c = create_limiter(LimitsSettings(backend=url, rules=many), clock=clock)
    assert {u.what: u.used for u in await c.usage(ALICE, "support")} == counts
    for limiter in (a, b, c):
        await limiter.aclose()


async def test_upgrade_carries_the_sql_stores_counts_over(tmp_path: Path, clock: FakeClock) -> None:
    """A deployment whose limits lived in the ledger's SQLite file (the SQL store's tables):
    after migration 0005 the embedded default finds every count where it was."""
    from vapi_proxy.limits import sql as sql_store

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    db = Database(url)
    await upgrade_async(db, "0004")
    settings = LimitsSettings(backend=url, rules=RULES)
    now = clock.t
    plan = make_plan(settings, [LimitRule.model_validate(RULES[0])], req(), now)
    keys = {c.hold.what: c.hold.key for c in plan.counters}
    slot = plan.slots[0].hold.key
    # The SQL store kept rate counts per fixed minute, keyed by the window's start.
    minute = int(now // 60 * 60)
    old_rate = keys["rate"].rsplit(":", 1)[0] + f":{minute}"
    holds = [["rate", old_rate, 1], ["quota", keys["quota"], 1],
             ["minutes", keys["minutes"], 300_000], ["concurrency", slot, 1]]  # fmt: skip

    def legacy(conn: sa.Connection) -> None:
        sql_store.metadata.create_all(conn)
        conn.execute(
            sql_store.counters.insert(),
            [
                {"key": old_rate, "value": 2, "expires_at": now + 3600},
                {"key": keys["quota"], "value": 2, "expires_at": now + 86400},
                {"key": keys["minutes"], "value": 360_000, "expires_at": now + 86400},
            ],
        )
        conn.execute(
            sql_store.slots.insert(), {"key": slot, "reservation_id": "r1", "expires_at": now + 420}
        )
        conn.execute(
            sql_store.reservations.insert(),
            [
                {"id": "r1", "namespace": "vapi-proxy", "call_key": "vapi-proxy:c1",
                 "state": "committed", "expires_at": now + 420, "keep_until": now + 90000,
                 "holds": json.dumps(holds), "applied": ""},
                {"id": "r2", "namespace": "vapi-proxy", "call_key": "vapi-proxy:c2",
                 "state": "settled", "expires_at": now, "keep_until": now + 86400,
                 "holds": json.dumps(holds), "applied": "m"},
            ],
        )  # fmt: skip

    await db.run_write(legacy)
    ledger = Ledger(db)
    await ledger.record_call(call_id="c1", identity=ALICE, profile="support", reservation_id="r1")
    await upgrade_async(db)

    limiter = create_limiter(LimitsSettings(rules=RULES), clock=clock, database=db)
    assert await used(limiter) == {"rate": 2, "quota": 2, "minutes": 6, "concurrency": 1}
    with pytest.raises(TooManyRequestsError, match="in progress"):
        await limiter.reserve(req(worst_case_seconds=60))
    await limiter.settle("c1", duration_seconds=90, cost_usd=0.01)  # its webhook, after
    assert await used(limiter) == {"rate": 2, "quota": 2, "minutes": 2.5, "concurrency": 0}
    await limiter.reserve(req(worst_case_seconds=60))
    with pytest.raises(TooManyRequestsError, match="3 calls for today"):
        await limiter.reserve(req(worst_case_seconds=60))
    await limiter.aclose()
    await db.aclose()


async def test_a_limits_file_of_its_own_writes_commits_and_settlements_at_once(
    tmp_path: Path, clock: FakeClock
) -> None:
    """With no ledger rows beside it to fall back on, nothing waits in the buffer: a process
    killed right after a settle leaves it on file."""
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    first = create_limiter(LimitsSettings(backend=url, rules=RULES), clock=clock)
    r = await first.reserve(req())
    await first.commit(r, "c1")
    await first.settle("c1", duration_seconds=60, cost_usd=None)
    assert first.store._buffer == []  # type: ignore[attr-defined]
    # The kill: the store is dropped without closing.
    first.store._db.detach(first.store)  # type: ignore[attr-defined]
    second = create_limiter(LimitsSettings(backend=url, rules=RULES), clock=clock)
    assert await used(second) == {"rate": 1, "quota": 1, "minutes": 1, "concurrency": 0}
    await second.aclose()
    await first.store._db.aclose()  # type: ignore[attr-defined]


async def test_a_reservation_whose_transaction_fails_takes_nothing(
    ledger: Ledger, clock: FakeClock
) -> None:
    """A reservation shares the writer's transaction with other writes: when that transaction
    fails at COMMIT, what each reservation of that transaction took in memory is given back."""
    limiter = embedded(ledger, clock, [{**TWO[0], "failure_mode": "closed"}])
    await limiter.health()  # counters rebuilt before the writer is paused
    db = ledger.database
    # A deferred foreign key is checked at COMMIT: a way to make the whole transaction fail.
    await db.run_raw(
        lambda conn: conn.execute(
            "CREATE TABLE orphans (parent TEXT REFERENCES calls (id) DEFERRABLE INITIALLY DEFERRED)"
        )
    )
    async with db.write():  # the writer waits: both writes below land in one transaction
        asks = [asyncio.ensure_future(limiter.reserve(req())) for _ in range(2)]
        orphan = asyncio.ensure_future(
            db.run_raw(lambda conn: conn.execute("INSERT INTO orphans VALUES ('nobody')"))
        )
        for _ in range(5):
            await asyncio.sleep(0)
    for ask in asks:
        with pytest.raises(ServiceUnavailableError):  # the rule fails closed
            await ask
    with pytest.raises(sa.exc.IntegrityError):
        await orphan
    assert await used(limiter) == {"rate": 0, "quota": 0, "minutes": 0, "concurrency": 0}
    for _ in range(2):
        await limiter.reserve(req())  # concurrency 2: both slots free again
    await limiter.aclose()


async def test_an_old_snapshot_loads_and_the_state_stays_out_of_the_collectors_sight(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A snapshot row as deployments hold it (written when records were dataclasses) loads
    as it was; what the store then takes, and what another worker replays from the log, is
    kept in objects the garbage collector stops tracking (`test_limits_state`)."""
    old = json.loads(OLD_SNAPSHOT.read_text())
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    db = Database(url)

    def deployed(conn: sa.Connection) -> None:
        limit_log.create(conn)
        limit_state.create(conn)
        write_snapshot(conn, "vapi-proxy", old, START)

    await db.run_write(deployed)
    await db.aclose()
    clock.t = START + 10
    settings = LimitsSettings(backend=url, rules=SNAPSHOT_RULES, grace_seconds=30)
    a = create_limiter(settings, clock=clock)
    b = create_limiter(settings, clock=clock)
    await a.health()
    await b.health()
    stores = [a.store, b.store]
    assert all(s._state.dump() == old for s in stores)  # type: ignore[attr-defined]
    c = PEOPLE[2]  # r3 (expired) and r5 (pending, 10 minutes and $0.50 held)
    usage = {u.what: u.used for u in await a.usage(c, "p") if u.rule == "r"}
    assert usage == {"rate": 0, "quota": 2, "minutes": 10, "usd": 1.0, "concurrency": 1}
    r = await a.reserve(AdmissionRequest(c, "p", worst_case_seconds=60, estimated_cost_usd=0.5))
    await a.commit(r, "call-new")
    assert {u.what: u.used for u in await b.usage(c, "p") if u.rule == "r"}["concurrency"] == 2
    for _ in range(3):  # see test_the_held_state_is_out_of_the_collectors_sight
        gc.collect()
    for s in stores:
        records = s._state.records  # type: ignore[attr-defined]
        assert r.id in records and not [x for x in records.values() if gc.is_tracked(x)]
    await a.aclose()
    await b.aclose()
