"""Group commit for call rows: requests that arrive while a write is running share the next one.

Every created call must be in the ledger before its reply (docs/architecture.md, step 7), but one
transaction per request costs several hand-offs to the database thread or round trips to
PostgreSQL. Here each request queues its row and awaits its own result; one writer drains the
queue into a single transaction (one multi-row INSERT … ON CONFLICT DO NOTHING RETURNING id),
so under load many rows share one commit and when idle a row is written at once.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from vapi_proxy.ledger.engine import Database
from vapi_proxy.ledger.schema import call_events, calls

MAX_BATCH = 256


class CallRowWriter:
    """Queues call rows and writes them in batches; `add` answers whether the row was new."""

    def __init__(self, db: Database, insert: Callable[[sa.Table], Any]) -> None:
        self._db = db
        # Built once: the multi-row insert's compiled form is cached per batch shape.
        self._insert = (
            insert(calls).on_conflict_do_nothing(index_elements=["id"]).returning(calls.c.id)
        )
        self._pending: list[tuple[dict[str, Any], asyncio.Future[bool]]] = []
        self._writing = False

    async def add(self, row: dict[str, Any]) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        if not self._writing:
            self._writing = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                rows = [row for row, _ in batch]
                try:
                    inserted = await self._db.run_write(functools.partial(self._write, rows=rows))
                except BaseException as exc:  # every waiter gets the failure, none hangs
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for row, future in batch:
                    new = row["id"] in inserted
                    # Only the first of several same-id rows in a batch created it.
                    inserted.discard(row["id"])
                    if not future.done():
                        future.set_result(new)
        finally:
            self._writing = False

    def _write(self, conn: Connection, *, rows: list[dict[str, Any]]) -> set[str]:
        # Duplicate ids inside one batch (a retry racing its original) would make one
        # statement conflict with itself: the first wins, the rest are plain conflicts.
        unique: dict[str, dict[str, Any]] = {}
        for row in rows:
            unique.setdefault(row["id"], row)
        inserted = {r[0] for r in conn.execute(self._insert, list(unique.values()))}
        if inserted:
            # Events that beat their call's row (the webhook raced our reply) now count.
            conn.execute(
                call_events.update()
                .where(call_events.c.call_id.in_(inserted), call_events.c.known.is_(False))
                .values(known=True)
            )
        return inserted
