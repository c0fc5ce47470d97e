"""Group commit: writes that arrive while one is running share the next transaction.

Every created call must be in the ledger before its reply (docs/architecture.md, step 7), and
every webhook event before its answer, but one transaction per request costs several hand-offs
to the database thread or round trips to PostgreSQL. Here each request queues its item and
awaits its own result; one drainer hands the queue to a batch function in one go (call rows:
one multi-row INSERT … ON CONFLICT DO NOTHING RETURNING id; webhook events:
`Ledger.apply_events`), so under load many items share one commit and when idle an item is
written at once. The one writer for both.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from vapi_proxy.ledger.engine import Database
from vapi_proxy.ledger.schema import call_events, calls

MAX_BATCH = 256
Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """Queues items and writes them in batches through `write`, which returns one result per
    item, in order. With `shield`, a waiter that is cancelled (its client left) does not cancel
    its item: the write goes ahead."""

    def __init__(
        self,
        write: Callable[[list[Item]], Awaitable[Sequence[Result]]],
        *,
        max_batch: int = MAX_BATCH,
        shield: bool = False,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._shield = shield
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def add(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return await (asyncio.shield(future) if self._shield else future)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    results = await self._write([item for item, _ in batch])
                except BaseException as exc:  # every waiter gets the failure, none hangs
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._drainer = None


class CallRows:
    """The batch function for call rows: `write(rows)` answers, per row, whether it was new."""

    def __init__(self, db: Database, insert: Callable[[sa.Table], Any]) -> None:
        self._db = db
        # Built once: the multi-row insert's compiled form is cached per batch shape.
        self._insert = (
            insert(calls).on_conflict_do_nothing(index_elements=["id"]).returning(calls.c.id)
        )

    async def write(self, rows: list[dict[str, Any]]) -> list[bool]:
        inserted = await self._db.run_write(functools.partial(self._write, rows=rows))
        created = []
        for row in rows:
            created.append(row["id"] in inserted)
            # Only the first of several same-id rows in a batch created it.
            inserted.discard(row["id"])
        return created

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
