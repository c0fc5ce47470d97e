"""WAL checkpoints are off the SQLite writer's commit path (engine.py): the writer's connection
never checkpoints inside a `COMMIT`, and the checkpointer keeps the WAL from growing without end
while the writer keeps writing."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from vapi_proxy.ledger import engine
from vapi_proxy.ledger.engine import Database


async def test_the_writer_does_not_checkpoint_inside_its_commits(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        pages = await db.run_raw(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        assert pages == 0  # SQLite's default, 1000, checkpoints in the commit crossing it
        mode = await db.run_raw(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        assert mode == "wal"
    finally:
        await db.aclose()


async def test_the_wal_starts_over_while_the_writer_keeps_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "WAL_TAIL_PAGES", 20)
    monkeypatch.setattr(engine, "CHECKPOINT_SECONDS", 0.001)
    path = tmp_path / "w.db"
    db = Database(f"sqlite:///{path}")
    blob = os.urandom(16 * 1024)  # four or five pages a transaction
    written = 0
    try:
        await db.run_raw(lambda c: c.execute("CREATE TABLE t (b BLOB)"))
        # Transactions back to back, never a pause: a passive checkpoint finishes but the
        # writer is inside its next transaction, so without the writer's own tail copy the WAL
        # would never start over and would hold every page written.
        for _ in range(1500):
            await db.run_raw(lambda c: c.execute("INSERT INTO t VALUES (?)", (blob,)))
            written += len(blob)
        wal = os.path.getsize(f"{path}-wal")
        assert wal < written / 3, (wal, written)
        # What was committed is all there, read by a connection of its own.
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1500
    finally:
        await db.aclose()


async def test_closing_stops_the_checkpointer(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'w.db'}")
    await db.run_raw(lambda c: c.execute("CREATE TABLE t (x)"))
    writer = db._writer
    assert writer is not None and writer.checkpointer is not None
    thread = writer.checkpointer.thread
    await db.aclose()
    assert not thread.is_alive()
