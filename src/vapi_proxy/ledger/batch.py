"""Group commit: writes that arrive while one is running share the next transaction.

Every created call must be in the ledger before its reply (docs/architecture.md, step 7), and
every webhook event before its answer, but one transaction per request costs several hand-offs
to the database thread or round trips to PostgreSQL. So each request queues its item and awaits
its own result, and whatever queued meanwhile is written in one go:

- call rows on SQLite: `CallRows`, a batch kind of the database's writer thread (engine.py):
  one prepared `INSERT … ON CONFLICT DO NOTHING` through `executemany`, in the writer's next
  transaction, no SQLAlchemy;
- call rows on PostgreSQL: `PgCallRows` behind a `GroupCommit`: one statement per batch on a
  dedicated asyncpg connection (arrays through `unnest`, prepared once), its own transaction;
- webhook events: `GroupCommit` over `Ledger.apply_events`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import make_url

from vapi_proxy.ledger.engine import Batch, Database

MAX_BATCH = 256
Item = TypeVar("Item")
Result = TypeVar("Result")

CALL_COLUMNS = (
    "id", "kind", "identity_key", "identity_hash", "auth_method", "tenant", "profile",
    "request_id", "created_at", "status", "max_duration_seconds", "reservation_id", "updated_at",
    "session_id", "control_url",
)  # fmt: skip
"""The order of a call row's values (`Ledger.record_call` builds them)."""
_INSERT = (
    f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) "  # noqa: S608 - constants only
    f"VALUES ({', '.join('?' * len(CALL_COLUMNS))}) ON CONFLICT (id) DO NOTHING"
)
# Events that beat their call's row (the webhook raced our reply) now count.
_KNOWN = "UPDATE call_events SET known = 1 WHERE call_id = ? AND known = 0"
_PG_TYPES = {"created_at": "timestamptz", "updated_at": "timestamptz",
             "max_duration_seconds": "float8"}  # fmt: skip
_PG_INSERT = (
    f"WITH new AS (INSERT INTO calls ({', '.join(CALL_COLUMNS)}) "  # noqa: S608 - constants only
    "SELECT * FROM unnest("
    + ", ".join(f"${i}::{_PG_TYPES.get(c, 'text')}[]" for i, c in enumerate(CALL_COLUMNS, 1))
    + ") ON CONFLICT (id) DO NOTHING RETURNING id), "
    "known AS (UPDATE call_events SET known = true "
    "WHERE call_id IN (SELECT id FROM new) AND known = false) "
    "SELECT id FROM new"
)


def sqlite_time(value: datetime) -> str:
    """A timestamp as the ledger's `UTCDateTime` stores it on SQLite (SQLAlchemy's format)."""
    if value.tzinfo is None:
        raise ValueError("ledger timestamps must be timezone-aware")
    v = value.astimezone(UTC)
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d} "
        f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}"
    )


class GroupCommit(Generic[Item, Result]):
    """Queues items and writes them in batches through `write`, which returns one result per
    item, in order. With `shield`, a waiter that is cancelled (its client left) does not cancel
    its item: the write goes ahead. `turns`: how many times the event loop turns before each
    batch is taken, so requests already read join it (under load a batch taken at once held one
    item, the next all the others: each batch costs a transaction)."""

    def __init__(
        self,
        write: Callable[[list[Item]], Awaitable[Sequence[Result]]],
        *,
        max_batch: int = MAX_BATCH,
        shield: bool = False,
        turns: int = 0,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._shield = shield
        self._turns = turns
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
                for _ in range(self._turns):
                    await asyncio.sleep(0)
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


def _created(rows: Sequence[tuple[Any, ...]], inserted: set[str]) -> list[bool]:
    """Per row, whether it created its call: only the first of same-id rows in a batch did."""
    created = []
    for row in rows:
        created.append(row[0] in inserted)
        inserted.discard(row[0])
    return created


class CallRows(Batch[tuple[Any, ...], bool]):
    """Call rows on SQLite, written on the database's writer thread: per row, whether it was new."""

    def write(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[bool]:
        # Duplicate ids inside one batch (a retry racing its original): the first wins.
        unique: dict[str, tuple[Any, ...]] = {}
        for row in rows:
            unique.setdefault(row[0], row)
        fresh = list(unique.values())
        conn.execute("SAVEPOINT call_rows")
        if conn.executemany(_INSERT, fresh).rowcount == len(fresh):
            inserted = set(unique)
        else:
            # Some were recorded before (retries): which ones, row by row (rare).
            conn.execute("ROLLBACK TO call_rows")
            inserted = {row[0] for row in fresh if conn.execute(_INSERT, row).rowcount == 1}
        conn.execute("RELEASE call_rows")
        if inserted:
            conn.executemany(_KNOWN, [(call_id,) for call_id in inserted])
        return _created(rows, inserted)


class PgCallRows:
    """Call rows on PostgreSQL: one statement per batch on a connection of its own."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: Any = None  # an asyncpg connection, opened on first use

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            import asyncpg  # type: ignore[import-untyped]

            engine = self._db.engine
            _, kwargs = engine.dialect.create_connect_args(make_url(self._db.url))
            kwargs.pop("prepared_statement_cache_size", None)
            kwargs.pop("prepared_statement_name_func", None)
            kwargs.setdefault("timeout", max(10.0, self._db.timeout))
            kwargs["command_timeout"] = self._db.timeout
            self._conn = await asyncpg.connect(**kwargs)
        return self._conn

    async def write(self, rows: list[tuple[Any, ...]]) -> list[bool]:
        unique: dict[str, tuple[Any, ...]] = {}
        for row in rows:
            unique.setdefault(row[0], row)
        columns = [list(values) for values in zip(*unique.values(), strict=True)]
        conn = await self._connection()
        try:
            inserted = {r[0] for r in await conn.fetch(_PG_INSERT, *columns)}
        except BaseException as exc:
            if not isinstance(exc, Exception) or conn.is_closed():
                conn.terminate()  # cancelled mid-statement: its state is unknown
                self._conn = None
            raise
        return _created(rows, inserted)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await conn.close()
