"""The embedded store's snapshots: a short log is not folded into a big state (a snapshot
costs in proportion to the state), and the fold never holds up reservations: the state is
copied inside the upkeep's transaction, serialised outside it in pieces, and stored over an
older snapshot only."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from unittest.mock import ANY

import pytest
import sqlalchemy as sa

from tests.support.limits import FakeClock
from vapi_proxy.auth.identity import Identity
from vapi_proxy.ledger.engine import Database
from vapi_proxy.limits import AdmissionRequest, LimitsSettings, create_limiter
from vapi_proxy.limits import embedded as embedded_module
from vapi_proxy.limits.core import StoreLimiter
from vapi_proxy.limits.embedded import EmbeddedStore
from vapi_proxy.limits.memory import CounterState

ALICE = Identity(subject="alice", method="jwt")
MANY = [{"name": "q", "quota": {"per_day": 1000}, "concurrency": 1000}]


async def log_rows(url: str) -> int:
    db = Database(url)
    try:
        async with db.read() as conn:
            return int((await conn.execute(sa.text("SELECT count(*) FROM limit_log"))).scalar_one())
    finally:
        await db.aclose()


async def test_a_short_log_is_not_folded_into_a_big_state(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    monkeypatch.setattr(embedded_module, "SNAPSHOT_ENTRIES", 10)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_KEEP_ENTRIES", 0)
    limiter = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    ask = AdmissionRequest(identity=ALICE, profile="support", worst_case_seconds=300)
    try:
        for _ in range(30):
            await limiter.reserve(ask)
        await limiter.expire()  # 31 entries, 30 open reservations: folded
        assert await log_rows(url) == 1
        for _ in range(12):
            await limiter.reserve(ask)
        # 13 entries since (more than SNAPSHOT_ENTRIES) against 42 open reservations: kept.
        await limiter.expire()
        assert await log_rows(url) == 14
        # A new process reads the snapshot and the log after it: every count is there.
        other = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
        try:
            counts = {u.what: u.used for u in await other.usage(ALICE, "support")}
            assert counts == {"quota": 42, "concurrency": 42}
        finally:
            await other.aclose()
    finally:
        await limiter.aclose()


async def test_the_collector_is_off_while_each_piece_of_the_snapshot_is_dumped(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A piece's short-lived tuples would set off collections that walk the whole heap; the
    collector is back on between pieces (other work runs then)."""
    import gc

    seen: list[bool] = []
    dumps_part = embedded_module._dumps_part

    def watched(part: dict[str, object]) -> bytes:
        seen.append(gc.isenabled())
        return dumps_part(part)

    monkeypatch.setattr(embedded_module, "_dumps_part", watched)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_ENTRIES", 1)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_CHUNK", 2)
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    limiter = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    try:
        for _ in range(5):
            await limiter.reserve(AdmissionRequest(identity=ALICE, profile="support"))
        await limiter.expire()
    finally:
        await limiter.aclose()
    assert len(seen) >= 3 and not any(seen)  # the counters, slots and records: in pieces
    assert gc.isenabled()


@contextlib.asynccontextmanager
async def restarted(url: str, clock: FakeClock) -> AsyncIterator[object]:
    """A new process's limiter on the file: it rebuilds its counts from the snapshot and the
    log after it."""
    limiter = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    try:
        yield limiter
    finally:
        await limiter.aclose()


async def used(limiter: object) -> dict[str, int]:
    assert isinstance(limiter, StoreLimiter)
    return {u.what: u.used for u in await limiter.usage(ALICE, "support")}


def store_of(limiter: object) -> EmbeddedStore:
    assert isinstance(limiter, StoreLimiter)
    store = limiter._store
    assert isinstance(store, EmbeddedStore)
    return store


async def test_the_snapshot_is_serialised_outside_the_writers_transaction(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serialising costs in proportion to the state (a second and more at 150,000 held
    reservations): inside the writer's transaction, or holding the state's lock, it held up
    every reservation of the process meanwhile."""
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    limiter = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    store = store_of(limiter)
    held: list[tuple[bool, bool]] = []

    async def between() -> None:
        writer = store._db._writer
        assert writer is not None and writer._conn is not None
        held.append((store._lock.locked(), writer._conn.in_transaction))

    monkeypatch.setattr(embedded_module, "_between_pieces", between)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_ENTRIES", 10)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_CHUNK", 4)
    ask = AdmissionRequest(identity=ALICE, profile="support", worst_case_seconds=300)
    try:
        for _ in range(30):
            await limiter.reserve(ask)
        await limiter.expire()
    finally:
        await limiter.aclose()
    assert len(held) >= 8  # the header, 8 pieces of records, the end
    assert set(held) == {(False, False)}


async def test_what_is_logged_while_a_snapshot_is_serialised_is_kept(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries logged after the copy was taken are numbered after the snapshot's and stay in
    the log: a start replays them over it."""
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    limiter = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    ask = AdmissionRequest(identity=ALICE, profile="support", worst_case_seconds=300)
    done: list[str] = []

    async def between() -> None:
        if not done:
            done.append("x")
            first = await limiter.reserve(ask)
            await limiter.reserve(ask)
            await limiter.commit(first, "call-late")

    monkeypatch.setattr(embedded_module, "_between_pieces", between)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_ENTRIES", 10)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_KEEP_ENTRIES", 0)
    try:
        for _ in range(30):
            await limiter.reserve(ask)
        await limiter.expire()
        assert done
        assert await log_rows(url) >= 2  # the two reservations after the snapshot's entry
    finally:
        await limiter.aclose()
    async with restarted(url, clock) as other:
        assert await used(other) == {"quota": 32, "concurrency": 32}
        assert store_of(other)._state.calls == {"call-late": ANY}


async def test_a_snapshot_never_replaces_a_newer_one(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one worker serialises its snapshot, another stores a newer one and drops the log
    before it: the older snapshot stored over it would lose what lay between the two."""
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    a = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    b = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    ask = AdmissionRequest(identity=ALICE, profile="support", worst_case_seconds=300)
    inside: list[str] = []

    async def between() -> None:
        if not inside:  # a's snapshot, first piece: b logs two more and snapshots
            inside.append("a")
            await b.reserve(ask)
            await b.reserve(ask)
            await b.expire()

    monkeypatch.setattr(embedded_module, "_between_pieces", between)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_ENTRIES", 10)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_KEEP_ENTRIES", 0)
    try:
        await b.reserve(ask)
        for _ in range(30):
            await a.reserve(ask)
        await a.expire()
        newer = store_of(b)._snapshot_seq
        assert inside and newer > store_of(a)._snapshot_seq > 0
        db = Database(url)
        try:
            async with db.read() as conn:
                stored = (await conn.execute(sa.text("SELECT seq FROM limit_state"))).scalar_one()
        finally:
            await db.aclose()
        assert stored == newer
    finally:
        await a.aclose()
        await b.aclose()
    async with restarted(url, clock) as c:
        assert await used(c) == {"quota": 33, "concurrency": 33}


def test_the_pieces_are_the_dump_byte_for_byte() -> None:
    """The snapshot's form is unchanged (old snapshots load, tests/limits/old_snapshot.json):
    the pieces joined are what `orjson.dumps(state.dump())` gave, for any piece size."""
    import orjson

    from tests.limits.test_limits_state import START, scripted, spend

    crowded = scripted()  # and keys with many live slots, some with few
    for i in range(14):
        spend(crowded, f"more{i}", [0, 0, 0, 1, 2, 2][i % 6], START + 50 + i, 600)
    for state in (scripted(), crowded):
        whole = orjson.dumps(state.dump())
        for chunk in (1, 2, 3, 5, 8, 1000):
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(embedded_module, "SNAPSHOT_CHUNK", chunk)
                assert b"".join(embedded_module.snapshot_pieces(state.freeze())) == whole
    assert b"".join(embedded_module.snapshot_pieces(CounterState().freeze())) == orjson.dumps(
        CounterState().dump()
    )


async def test_a_worker_a_little_behind_catches_up_without_reloading(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entries before a snapshot's are kept a while: the other worker, behind by what was
    written since its last transaction, reads them instead of reloading the whole snapshot."""
    from vapi_proxy.limits.embedded import EmbeddedStore

    reloads: list[int] = []
    reload = EmbeddedStore._reload

    def counted(self: EmbeddedStore, conn: object) -> None:
        reloads.append(1)
        reload(self, conn)  # type: ignore[arg-type]

    monkeypatch.setattr(EmbeddedStore, "_reload", counted)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_ENTRIES", 10)
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    a = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    b = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    ask = AdmissionRequest(identity=ALICE, profile="support", worst_case_seconds=300)
    try:
        await b.reserve(ask)  # b starts (one reload: its start) and is then behind a
        for _ in range(30):
            await a.reserve(ask)
        await a.expire()  # a folds its log into a snapshot
        assert await log_rows(url) > 1
        started = len(reloads)
        await b.reserve(ask)
        assert len(reloads) == started  # caught up from the kept entries
        counts = {u.what: u.used for u in await b.usage(ALICE, "support")}
        assert counts == {"quota": 32, "concurrency": 32}
    finally:
        await a.aclose()
        await b.aclose()


async def test_snapshots_are_stored_compressed_and_text_ones_still_load(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot's JSON repeats every counter's key in each hold: compressed, it is stored in
    a far shorter transaction. One stored as text (before compression) loads as it did."""
    import sqlite3
    import zlib

    import orjson

    path = tmp_path / "limits.db"
    url = f"sqlite:///{path}"
    monkeypatch.setattr(embedded_module, "SNAPSHOT_ENTRIES", 10)
    limiter = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    ask = AdmissionRequest(identity=ALICE, profile="support", worst_case_seconds=300)
    try:
        for _ in range(30):
            await limiter.reserve(ask)
        await limiter.expire()
        dump = store_of(limiter)._state.dump()
    finally:
        await limiter.aclose()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        stored = conn.execute("SELECT state FROM limit_state").fetchone()[0]
        assert isinstance(stored, bytes)
        assert orjson.loads(zlib.decompress(stored)) == dump
        assert len(stored) * 5 < len(orjson.dumps(dump))
        with conn:  # as a proxy from before compression stored it
            conn.execute("UPDATE limit_state SET state = ?", (orjson.dumps(dump).decode(),))
    async with restarted(url, clock) as other:
        assert await used(other) == {"quota": 30, "concurrency": 30}
        assert store_of(other)._state.dump() == dump


async def test_the_log_is_dropped_a_piece_at_a_time(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropping a day's entries in one transaction held every reservation for as long (68 ms
    for 43,000 entries): the log before a snapshot goes in short transactions."""
    trims: list[int] = []
    trim = EmbeddedStore._trim

    def counted(self: EmbeddedStore, before: int, conn: object) -> None:
        trims.append(before)
        trim(self, before, conn)  # type: ignore[arg-type]

    monkeypatch.setattr(EmbeddedStore, "_trim", counted)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_ENTRIES", 10)
    monkeypatch.setattr(embedded_module, "SNAPSHOT_KEEP_ENTRIES", 2)
    monkeypatch.setattr(embedded_module, "TRIM_CHUNK", 4)
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    limiter = create_limiter(LimitsSettings(backend=url, rules=MANY), clock=clock)
    ask = AdmissionRequest(identity=ALICE, profile="support", worst_case_seconds=300)
    try:
        for _ in range(30):
            await limiter.reserve(ask)
        await limiter.expire()  # 31 entries: the snapshot's is the 31st, two kept before it
        assert trims == [5, 9, 13, 17, 21, 25, 29]
        assert await log_rows(url) == 3
    finally:
        await limiter.aclose()
    async with restarted(url, clock) as other:
        assert await used(other) == {"quota": 30, "concurrency": 30}
