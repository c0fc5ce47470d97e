"""Run the ledger's Alembic migrations from code: `upgrade(url)` for the CLI, `upgrade_async` on
start-up. Replicas starting together take turns (an advisory lock on PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from vapi_proxy.ledger.engine import Database

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK_ID = 0x7661_706D  # constant: one migrator at a time across replicas


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("the ledger ships no migrations")
    return head


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def current_revision(db: Database) -> str | None:
    async with db.read() as conn:
        return await conn.run_sync(_current)


async def upgrade_async(db: Database, revision: str = "head") -> str | None:
    """Upgrade to `revision` in one transaction; returns the revision now current."""
    cfg = alembic_config()

    def run(conn: Connection) -> str | None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        return _current(conn)

    db.check_reachable()
    async with db.write() as conn:
        if db.dialect == "postgresql":
            await conn.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))
        return await conn.run_sync(run)


def upgrade(url: str, revision: str = "head") -> str | None:
    """Blocking form for the CLI: `vapi-proxy db upgrade`."""

    async def main() -> str | None:
        db = Database(url)
        try:
            return await upgrade_async(db, revision)
        finally:
            await db.aclose()

    return asyncio.run(main())
