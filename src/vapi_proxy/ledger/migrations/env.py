"""Alembic environment for the ledger: runs on the connection `migrate.upgrade` hands it, or on
its own async engine when Alembic's CLI is pointed at this folder."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from vapi_proxy.ledger.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds tables for later revisions.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_own_engine(url: str) -> None:
    from vapi_proxy.ledger.engine import Database

    db = Database(url)
    try:
        async with db.write() as conn:
            await conn.run_sync(_run)
    finally:
        await db.aclose()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
elif (shared := config.attributes.get("connection")) is not None:
    _run(shared)
else:
    asyncio.run(_run_own_engine(config.get_main_option("sqlalchemy.url") or ""))
