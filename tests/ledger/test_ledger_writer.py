"""The SQLite writer thread: what shares a transaction, what a failure takes down with it, and
that an answer means the row is committed (read back through a connection of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from vapi_proxy.auth.identity import Identity
from vapi_proxy.ledger.store import Ledger

ALICE = Identity(subject="alice", method="api_key")
# A deferred foreign key is checked at COMMIT: a way to make a whole transaction fail.
ORPHANS = "CREATE TABLE orphans (parent TEXT REFERENCES calls (id) DEFERRABLE INITIALLY DEFERRED)"


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    store = Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    await store.start(auto_migrate=True)
    try:
        yield store
    finally:
        await store.aclose()


def committed_ids(tmp_path: Path) -> set[str]:
    """What another connection (another process would see the same) finds committed."""
    # closing(): a sqlite3 connection's own `with` ends a transaction, not the connection, and
    # Python 3.13 warns about every connection left for the collector.
    with contextlib.closing(sqlite3.connect(tmp_path / "ledger.db")) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM calls")}


async def together(ledger: Ledger, *writes: Awaitable[Any]) -> list[Any]:
    """Queue every write while the writer is paused, so all of them land in one transaction."""
    tasks: list[asyncio.Future[Any]] = []
    async with ledger.database.write():
        tasks = [asyncio.ensure_future(w) for w in writes]
        for _ in range(5):
            await asyncio.sleep(0)  # each task reaches its queue
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_an_answer_means_the_row_is_committed(ledger: Ledger, tmp_path: Path) -> None:
    for i in range(5):
        assert await ledger.record_call(call_id=f"c{i}", identity=ALICE, profile="p")
        assert f"c{i}" in committed_ids(tmp_path)


async def test_a_failing_write_does_not_take_its_neighbours_down(
    ledger: Ledger, tmp_path: Path
) -> None:
    db = ledger.database

    def broken(conn: sa.Connection) -> None:
        conn.execute(sa.text("INSERT INTO no_such_table VALUES (1)"))

    first, failed, second, raw = await together(
        ledger,
        ledger.record_call(call_id="a", identity=ALICE, profile="p"),
        db.run_write(broken),
        ledger.record_call(call_id="b", identity=ALICE, profile="p"),
        db.run_raw(lambda conn: conn.execute("SELECT count(*) FROM calls").fetchone()[0]),
    )
    assert (first, second) == (True, True)
    assert isinstance(failed, sa.exc.OperationalError)
    assert raw == 2  # it saw both rows of its own transaction
    assert committed_ids(tmp_path) == {"a", "b"}


async def test_a_failed_commit_fails_every_write_in_it(ledger: Ledger, tmp_path: Path) -> None:
    db = ledger.database
    await db.run_raw(lambda conn: conn.execute(ORPHANS))

    def orphan(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO orphans VALUES ('nobody')")

    results = await together(
        ledger,
        ledger.record_call(call_id="a", identity=ALICE, profile="p"),
        db.run_raw(orphan),
        ledger.record_call(call_id="b", identity=ALICE, profile="p"),
    )
    assert all(isinstance(r, sa.exc.IntegrityError) for r in results), results
    assert committed_ids(tmp_path) == set()
    # The writer goes on: the next transaction commits.
    assert await ledger.record_call(call_id="a", identity=ALICE, profile="p") is True
    assert committed_ids(tmp_path) == {"a"}


async def test_a_retry_in_a_later_batch_is_not_new(ledger: Ledger) -> None:
    assert await ledger.record_call(call_id="a", identity=ALICE, profile="p") is True
    again, fresh, twice = await together(
        ledger,
        ledger.record_call(call_id="a", identity=ALICE, profile="p"),
        ledger.record_call(call_id="b", identity=ALICE, profile="p"),
        ledger.record_call(call_id="b", identity=ALICE, profile="p"),
    )
    assert (again, fresh, twice) == (False, True, False)


async def test_timestamps_read_back_as_written(ledger: Ledger) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    at = datetime(2026, 12, 6, 7, 0, 0, tzinfo=timezone(timedelta(hours=2)))  # 05:00 UTC
    await ledger.record_call(call_id="a", identity=ALICE, profile="p", created_at=at)
    record = await ledger.get_call("a")
    assert record is not None
    assert record.created_at == at.astimezone(UTC)
    assert record.created_at.microsecond == 0
    async with ledger.database.read() as conn:
        hours = list(await conn.execute(sa.text("SELECT hour FROM usage_hourly")))
    assert hours == [("2026-12-06 05",)]


async def test_the_writer_keeps_statement_journals_in_memory(ledger: Ledger) -> None:
    """A batch of call rows is written in a savepoint, whose statement journal SQLite spilled to
    a temporary file past 64 KiB: a file created, written and deleted in every transaction, and
    an INSERT three times as dear (`bench.path_cost`: 222-235 → 182-183 µs per request)."""
    await ledger.record_call(call_id="c-journal", identity=ALICE, profile="p")

    def temp_store(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA temp_store").fetchone()[0])

    assert await ledger.database.run_raw(temp_store) == 2  # MEMORY
