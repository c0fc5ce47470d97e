"""Run the ledger's Alembic migrations from code: `upgrade(url)` for the CLI, `upgrade_async` on
start-up. Replicas starting together take turns (an advisory lock on PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
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


class MigrationInputError(RuntimeError):
    """A migration needs a fact only the operator knows (its message says which and how)."""


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


async def upgrade_async(
    db: Database, revision: str = "head", *, jwt_issuers: Sequence[str | None] | None = None
) -> str | None:
    """Upgrade to `revision` in one transaction; returns the revision now current.

    `jwt_issuers` are the proxy's jwt methods' issuers (None for one without), or the one an
    operator names: revision 0004 gives stored JWT callers the issuer when there is exactly one.
    """
    cfg = alembic_config()

    def run(conn: Connection) -> str | None:
        cfg.attributes["connection"] = conn
        if jwt_issuers is not None:
            cfg.attributes["jwt_issuers"] = list(jwt_issuers)
        command.upgrade(cfg, revision)
        return _current(conn)

    db.check_reachable()
    async with db.write() as conn:
        if db.dialect == "postgresql":
            await conn.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))
        return await conn.run_sync(run)


def upgrade(
    url: str, revision: str = "head", *, jwt_issuers: Sequence[str | None] | None = None
) -> str | None:
    """Blocking form for the CLI: `vapi-proxy db upgrade`."""

    async def main() -> str | None:
        db = Database(url)
        try:
            return await upgrade_async(db, revision, jwt_issuers=jwt_issuers)
        finally:
            await db.aclose()

    return asyncio.run(main())
