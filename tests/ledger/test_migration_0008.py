"""Migration 0008: the webhook tallies table comes with the upgrade and goes with the downgrade,
on SQLite and PostgreSQL, and an upgrade after a downgrade brings it back empty."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection

from vapi_proxy.ledger.engine import Database
from vapi_proxy.ledger.migrate import alembic_config, current_revision, upgrade_async
from vapi_proxy.ledger.schema import webhook_tallies

BEFORE = "0007"
ROW = {
    "bucket": datetime(2026, 12, 6, 20, 0, tzinfo=UTC),
    "process": "host/1/abcd",
    "counter": "rejected",
    "reason": "hmac_mismatch",
    "count": 3,
}


def _tables(conn: Connection) -> set[str]:
    return set(sa.inspect(conn).get_table_names())


async def _downgrade(db: Database, revision: str) -> None:
    cfg = alembic_config()

    def down(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)

    async with db.write() as conn:
        await conn.run_sync(down)


async def test_upgrade_and_downgrade(db_url: str) -> None:
    db = Database(db_url)
    try:
        assert await upgrade_async(db, BEFORE) == BEFORE
        async with db.read() as conn:
            assert "webhook_tallies" not in await conn.run_sync(_tables)

        assert await upgrade_async(db) == "0008"
        async with db.write() as conn:
            await conn.execute(sa.insert(webhook_tallies), [ROW])
        # The key is the bucket, process, counter and reason: the same one again conflicts
        # (what the flush's upsert adds to).
        with pytest.raises(sa.exc.IntegrityError):
            async with db.write() as conn:
                await conn.execute(sa.insert(webhook_tallies), [{**ROW, "count": 1}])
        async with db.read() as conn:
            stored = (await conn.execute(sa.select(webhook_tallies))).mappings().one()
        assert dict(stored) == ROW

        await _downgrade(db, BEFORE)
        assert await current_revision(db) == BEFORE
        async with db.read() as conn:
            tables = await conn.run_sync(_tables)
        assert "webhook_tallies" not in tables
        assert {"calls", "usage_hourly", "call_events"} <= tables  # nothing else went

        assert await upgrade_async(db) == "0008"
        async with db.read() as conn:
            count = (
                await conn.execute(sa.select(sa.func.count()).select_from(webhook_tallies))
            ).scalar_one()
        assert count == 0
    finally:
        await db.aclose()
