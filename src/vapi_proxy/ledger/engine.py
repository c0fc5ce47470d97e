"""One async SQLAlchemy engine over SQLite (WAL) or PostgreSQL, shared by the ledger and limits;
on SQLite, one writer thread that owns the process's write connection.

SQLite writers take the database lock up front (`BEGIN IMMEDIATE`) so a read-then-write is atomic
across processes. Every write of the request path (call rows, webhook events, limit
reservations) goes to the writer: one thread, one stdlib `sqlite3` connection (its statements
prepared once, in sqlite3's statement cache), fed from the event loop through a queue. Each
transaction takes everything queued since the last one (group commit): the items of each batch
kind in one `executemany`, each other write in a savepoint, one `COMMIT`, then one wake-up of
the event loop for all of them. Writes that need SQLAlchemy (schema checks, the SQL limits store)
run on the same thread and connection. `write()` (the async engine: the console, migrations)
pauses the writer for its transaction, so the process's writers queue in-process and never in
SQLite's busy handler, which sleeps.

WAL checkpoints are kept off the commit path. SQLite's automatic checkpoint runs inside the
`COMMIT` that crosses its threshold (it copies the WAL's pages into the database file), and every
request waiting on that transaction waited for the copy too. The writer's connection has
`wal_autocheckpoint=0`; after commits, a checkpointer thread with a connection of its own runs a
`PASSIVE` checkpoint (it never blocks a writer), at most every `CHECKPOINT_SECONDS`: that copies
nearly all. A passive checkpoint cannot finish while the writer keeps appending, and the WAL
starts over from its beginning only after one has, so once the WAL is longer than
`WAL_TAIL_PAGES` the writer copies what is left itself, between two transactions, after it has
answered the first: a few pages (with `RESTART`, which waits for the other process's transaction,
when a second worker kept the WAL from starting over since the last time). Past
`WAL_LIMIT_PAGES` (a reader kept the checkpoints from finishing) the checkpointer waits for
readers (`RESTART`), and `journal_size_limit` gives the file back when it starts over. A commit
is as durable as before: it is in the WAL when `COMMIT` returns, whoever copies it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, Protocol, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

T = TypeVar("T")
Item = TypeVar("Item")
Result = TypeVar("Result")
log = logging.getLogger(__name__)

POOL_SIZE = 10
POOL_OVERFLOW = 0
"""PostgreSQL: the engine's pool (`pool_size`, `max_overflow`); the ledger and the SQL limits
store share it when they share a database. No overflow: the pool closes an overflow connection
whenever it comes back to a full pool, so under steady load past `pool_size` it kept opening new
ones (a backend forked each time, and a login costing the client more CPU than a reservation):
5 + 5 opened a connection every 11 reservations at 16 concurrent callers, at half the rate."""

CHECKPOINT_SECONDS = 0.2
"""SQLite: the least time between two checkpoints by the checkpointer thread."""
WAL_TAIL_PAGES = 1000
"""SQLite: a WAL longer than this (SQLite's own automatic threshold) is finished by the writer
after the checkpointer's passive checkpoint, so it starts over."""
WAL_LIMIT_PAGES = 16384
"""SQLite: a WAL longer than this (64 MiB of 4 KiB pages) after a passive checkpoint is
checkpointed with `RESTART`, which waits for readers and writers: the bound on its growth."""
WAL_KEEP_BYTES = 64 * 1024 * 1024
"""SQLite `journal_size_limit` of the writer's connection: the WAL file is cut back to this when
it starts over."""

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def async_url(url: str) -> str:
    """`sqlite:///x.db` → `sqlite+aiosqlite:///x.db`; `postgresql://…` → `…+asyncpg://…`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL: {url!r}")
    base = scheme.split("+", 1)[0].lower()
    if base not in _DRIVERS:
        raise ValueError(f"unsupported database {scheme!r}: use sqlite:/// or postgresql://")
    return f"{_DRIVERS[base]}://{rest}"


class Companion(Protocol):
    """State written with whatever transaction comes next (the embedded limiter's buffered
    commits and settlements ride on the ledger's writes): one write, not two."""

    def flush(self, conn: sqlite3.Connection) -> object:
        """Inside a write transaction: write what is pending; returns a token for `restore`."""
        ...

    def restore(self, token: object) -> None:
        """That transaction failed: what `flush` wrote must be written again later."""
        ...


class RawJSON(str):
    """JSON text already serialised (orjson's): a JSON column stores it as it is, where it would
    serialise any other value again."""

    __slots__ = ()


def _json_serializer(value: Any) -> str:
    """The engine's serialiser for JSON columns: `json.dumps` (SQLAlchemy's default) except
    for `RawJSON`."""
    return str.__str__(value) if isinstance(value, RawJSON) else json.dumps(value)


def redact(url: str) -> str:
    """The URL with any password hidden, for logs and health output."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL is not worth a crash in a log line
        return "<database url>"


class Batch(Generic[Item, Result]):
    """A kind of write queued item by item (`Database.add`) and written many at a time on the
    SQLite writer thread: `write` answers one result per item, in order."""

    def write(self, conn: sqlite3.Connection, items: list[Item]) -> Sequence[Result]:
        raise NotImplementedError

    def failed(self, items: list[Item]) -> None:
        """The transaction that wrote `items` did not commit (called on the writer thread)."""


_RAW, _SA, _PAUSE, _CLOSE = "raw", "sa", "pause", "close"


class _Job:
    __slots__ = ("future", "item", "kind", "loop")

    def __init__(
        self, kind: object, item: Any, future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.kind = kind
        self.item = item
        self.future = future
        self.loop = loop


class _Borrowed:
    """The writer's connection as SQLAlchemy sees it: the writer owns the transaction, so
    SQLAlchemy's commit, rollback and close are no-ops."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def raw_connection(conn: Connection) -> sqlite3.Connection:
    """The stdlib connection under a SQLAlchemy connection that `Database.run_write` gave."""
    return cast(sqlite3.Connection, conn.connection.driver_connection)


def _wrap(error: BaseException) -> BaseException:
    """sqlite3's errors as SQLAlchemy's (what callers of the engine catch)."""
    if isinstance(error, sqlite3.Error):
        return exc.DBAPIError.instance(None, None, error, sqlite3.Error)
    return error


class _Checkpointer:
    """Checkpoints a SQLite file's WAL from a thread and connection of its own, after the
    writer's commits (see the module docstring)."""

    def __init__(self, path: str, busy_ms: int) -> None:
        self._path = path
        self._busy_ms = busy_ms
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # one checkpoint at a time (the thread or `run`)
        self._conn: sqlite3.Connection | None = None
        self.tail_due = False
        """Set by the checkpointer: the writer should finish the checkpoint (`finish`)."""
        self._tail_frames = 0
        """The WAL's length at the writer's last `finish`."""
        self.thread = threading.Thread(
            target=self._loop, name="vapi-proxy-sqlite-checkpoint", daemon=True
        )
        self.thread.start()

    def poke(self) -> None:
        """Something was committed."""
        self._wake.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        try:
            while True:
                self._wake.wait()
                if self._stopped.is_set():
                    return
                self._wake.clear()
                try:
                    self.run()
                except sqlite3.Error:  # the next commit tries again
                    log.warning("sqlite checkpoint failed", exc_info=True)
                if self._stopped.wait(CHECKPOINT_SECONDS):
                    return
        finally:
            with self._lock:
                if self._conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.close()
                    self._conn = None

    def run(self) -> tuple[int, int, int]:
        """One checkpoint: (busy, WAL frames, frames checkpointed), as `PRAGMA wal_checkpoint`."""
        with self._lock:
            if self._conn is None:
                self._conn = sqlite3.connect(
                    self._path,
                    timeout=self._busy_ms / 1000,
                    isolation_level=None,
                    check_same_thread=False,
                )
                self._conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            conn = self._conn
            busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames > WAL_LIMIT_PAGES:
                busy, frames, done = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            elif frames > WAL_TAIL_PAGES:
                # Even a complete one does not start the WAL over if the writer was inside a
                # transaction when it finished (its next one begins after frames not copied).
                self.tail_due = True
            return int(busy), int(frames), int(done)

    def finish(self, conn: sqlite3.Connection) -> None:
        """On the writer's thread, between transactions: copy the pages the last passive
        checkpoint left (appended while it ran), so the next transaction starts the WAL over."""
        self.tail_due = False
        try:
            frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
            if frames > self._tail_frames:
                # Longer than at the last tail: the WAL did not start over, because another
                # process (a second worker) was inside a transaction each time. RESTART waits
                # for it (SQLite's busy handler: a millisecond or two) and holds new writers
                # back meanwhile, as the automatic checkpoint inside a commit did.
                frames = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[1]
            self._tail_frames = frames
        except sqlite3.Error:
            log.warning("sqlite checkpoint failed", exc_info=True)


class _Writer:
    """The thread that owns a process's SQLite write connection (see the module docstring)."""

    def __init__(self, path: str, busy_ms: int, companions: list[Companion]) -> None:
        self._path = path
        self._busy_ms = busy_ms
        self._companions = companions
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._sa: Engine | None = None
        self.checkpointer = _Checkpointer(path, busy_ms) if _on_disk(path) else None
        self.thread = threading.Thread(target=self._run, name="vapi-proxy-sqlite", daemon=True)
        self.thread.start()

    def submit(self, kind: object, item: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(kind, item, future, loop))
        return future

    # --- on the writer thread --------------------------------------------------------------

    def _next(self) -> list[_Job]:
        """Wait for work (a profile shows this thread idle here), then take all that queued."""
        q = self._queue
        jobs = [q.get()]
        while not q.empty():
            jobs.append(q.get_nowait())
        return jobs

    def _run(self) -> None:
        while True:
            jobs = self._next()
            writes: list[_Job] = []
            for job in jobs:
                if job.kind is _PAUSE or job.kind is _CLOSE:
                    if writes:
                        self._transaction(writes)
                        writes = []
                    if job.kind is _CLOSE:
                        self._close()
                        self._deliver([(job, None, None)])
                        return
                    self._deliver([(job, None, None)])
                    job.item.wait()  # the paused writer's resume event
                else:
                    writes.append(job)
            if writes:
                self._transaction(writes)
            checkpointer = self.checkpointer
            if checkpointer is not None and checkpointer.tail_due and self._conn is not None:
                checkpointer.finish(self._conn)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
            _pragmas(conn, self._busy_ms)
            # A savepoint keeps the pages it changes in a statement journal, which SQLite spills
            # to a temporary file past 64 KiB: a batch of call rows (about 50 pages, in the
            # batch's savepoint) created, wrote and deleted a file in every transaction, and
            # the INSERT cost three times as much (50 against 15 µs a row, measured). In
            # memory, a journal holds at most what one transaction changes.
            conn.execute("PRAGMA temp_store=MEMORY")
            if self.checkpointer is not None:
                # Checkpoints are the checkpointer's, off the commit path.
                conn.execute("PRAGMA wal_autocheckpoint=0")
                conn.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
            self._conn = conn
        return self._conn

    def _sa_engine(self, conn: sqlite3.Connection) -> Engine:
        if self._sa is None:
            borrowed = _Borrowed(conn)
            self._sa = create_engine("sqlite://", creator=lambda: borrowed, poolclass=StaticPool)
        return self._sa

    def _transaction(self, jobs: list[_Job]) -> None:
        groups: dict[object, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.kind if isinstance(job.kind, Batch) else job, []).append(job)
        tokens: list[tuple[Companion, object]] = []
        done: list[tuple[list[_Job], Sequence[Any]]] = []
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            tokens = [(c, c.flush(conn)) for c in list(self._companions)]
        except BaseException as error:
            self._abort(tokens, [], list(groups.values()), error)
            return
        nested = len(groups) > 1
        failures: list[tuple[list[_Job], BaseException]] = []
        ordered = list(groups.values())
        for i, group in enumerate(ordered):
            try:
                if nested:
                    conn.execute("SAVEPOINT job")
                results = self._run_group(conn, group)
                if nested:
                    conn.execute("RELEASE job")
                done.append((group, results))
            except BaseException as error:
                if not nested or not _undo_savepoint(conn):
                    self._abort(tokens, done, ordered[i:], error)
                    self._fail(failures)
                    return
                self._failed(group)
                failures.append((group, error))
        try:
            conn.execute("COMMIT")
        except BaseException as error:
            self._abort(tokens, done, [], error)
            self._fail(failures)
            return
        if self.checkpointer is not None:
            self.checkpointer.poke()
        out: list[tuple[_Job, Any, BaseException | None]] = []
        for group, results in done:
            out.extend((job, result, None) for job, result in zip(group, results, strict=True))
        self._deliver(out)
        self._fail(failures)

    def _fail(self, failures: list[tuple[list[_Job], BaseException]]) -> None:
        """Jobs whose own savepoint failed (their batch's `failed` has been called)."""
        if failures:
            self._deliver([(job, None, _wrap(e)) for group, e in failures for job in group])

    def _run_group(self, conn: sqlite3.Connection, group: list[_Job]) -> Sequence[Any]:
        kind = group[0].kind
        if isinstance(kind, Batch):
            return kind.write(conn, [job.item for job in group])
        if kind is _RAW:
            return [group[0].item(conn)]
        with self._sa_engine(conn).connect() as sa_conn:
            return [group[0].item(sa_conn)]

    def _abort(
        self,
        tokens: list[tuple[Companion, object]],
        done: list[tuple[list[_Job], Sequence[Any]]],
        rest: list[list[_Job]],
        error: BaseException,
    ) -> None:
        """The whole transaction failed: roll back, give the companions their state back, and
        fail every job in it."""
        conn = self._conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("sqlite writer: rollback failed", exc_info=True)
        for companion, token in tokens:
            companion.restore(token)
        wrapped = _wrap(error)
        out: list[tuple[_Job, Any, BaseException | None]] = []
        for group in [g for g, _ in done] + rest:
            self._failed(group)
            out.extend((job, None, wrapped) for job in group)
        self._deliver(out)

    @staticmethod
    def _failed(group: list[_Job]) -> None:
        kind = group[0].kind
        if isinstance(kind, Batch):
            try:
                kind.failed([job.item for job in group])
            except Exception:
                log.exception("sqlite writer: undoing a failed batch failed")

    @staticmethod
    def _deliver(out: list[tuple[_Job, Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]]
        by_loop = {}
        for entry in out:
            by_loop.setdefault(entry[0].loop, []).append(entry)
        for loop, entries in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that event loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, entries)

    def _close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        if self._sa is not None:
            self._sa.dispose()
            self._sa = None
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                log.warning("sqlite writer: close failed", exc_info=True)
            self._conn = None


def _on_disk(path: str) -> bool:
    return bool(path) and path != ":memory:" and not path.startswith("file::memory:")


def _undo_savepoint(conn: sqlite3.Connection) -> bool:
    """Roll back to the last savepoint; False if the transaction itself is gone."""
    if not conn.in_transaction:
        return False
    try:
        conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")
    except sqlite3.Error:
        return False
    return True


def _settle(entries: list[tuple[_Job, Any, BaseException | None]]) -> None:
    for job, result, error in entries:
        future = job.future
        if future.done():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


class Database:
    """An engine plus the write discipline its dialect needs."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = async_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        self._write_lock = asyncio.Lock()  # used on SQLite only
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": timeout}
        else:
            # Connecting is slower than a statement on a busy host (a backend is forked): a
            # burst that opens the pool must not read as "PostgreSQL is down".
            kwargs["connect_args"] = {"timeout": max(10.0, timeout), "command_timeout": timeout}
            # Few connections: transactions are short (limits reserve in one call), and a burst
            # from every replica opening dozens each would only queue inside PostgreSQL.
            kwargs["pool_size"] = POOL_SIZE
            kwargs["max_overflow"] = POOL_OVERFLOW
            # A burst queues for a pooled connection rather than failing: each statement is
            # still bounded by `command_timeout`, and refusing a burst as "store down" would
            # turn load into 503s.
            kwargs["pool_timeout"] = max(30.0, timeout)
        kwargs["json_serializer"] = _json_serializer
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        # The same pool, each statement its own transaction (`run_statement`).
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.pool_connections = 1 if self.dialect == "sqlite" else POOL_SIZE + POOL_OVERFLOW
        """How many connections the engine holds at most (SQLite: its writes are one at a
        time); a caller that bounds its own concurrency by the pool sizes it with this."""
        self.timeout = timeout
        self._writer: _Writer | None = None
        self._companions: list[Companion] = []
        if self.dialect == "sqlite":
            _sqlite_discipline(self.engine.sync_engine, int(timeout * 1000))

    def attach(self, companion: Companion) -> None:
        """Have every write transaction on SQLite also flush `companion`'s pending state."""
        self._companions.append(companion)

    def detach(self, companion: Companion) -> None:
        if companion in self._companions:
            self._companions.remove(companion)

    def check_reachable(self) -> None:
        """Raise OSError early when a SQLite file cannot be opened (its folder is missing or
        read-only): failing inside aiosqlite's connect leaves its worker thread behind."""
        if self.dialect != "sqlite":
            return
        path = make_url(self.url).database
        if not path or path == ":memory:":
            return
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            raise FileNotFoundError(f"SQLite folder {folder!r} is missing or not writable")

    def _sqlite_writer(self) -> _Writer:
        if self._writer is None:
            path = make_url(self.url).database or ":memory:"
            self._writer = _Writer(path, int(self.timeout * 1000), self._companions)
        return self._writer

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that may write, on the async engine, committed on exit (SQLite: with the
        writer paused). The request path's writes use `run_write`, `run_raw` and `add`."""
        if self.dialect != "sqlite":
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock:
            resume = threading.Event()
            try:
                if self._writer is not None:
                    await self._writer.submit(_PAUSE, resume)
                async with self.engine.begin() as conn:
                    yield conn
            finally:
                resume.set()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (a deferred one on SQLite: readers never block writers)."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(sqlite_begin="DEFERRED")
            async with conn.begin():
                yield conn

    async def run_write(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in one write transaction, committed when it returns, rolled back if it
        raises. SQLite: on the writer thread, in a savepoint of its next transaction;
        PostgreSQL: on the async engine."""
        if self.dialect != "sqlite":
            async with self.engine.begin() as conn:
                return await conn.run_sync(fn)
        result: T = await self._sqlite_writer().submit(_SA, fn)
        return result

    async def run_statement(self, fn: Callable[[Connection], T]) -> T:
        """PostgreSQL only: run `fn` on a connection in autocommit, so each statement it executes
        is its own transaction: one round trip instead of three (BEGIN, the statement, COMMIT),
        and the row locks it takes are released when the statement ends, not a round trip later.
        Under a burst on the same rows, every other transaction waits for those locks. Nothing
        spans two of `fn`'s statements: use it for statements that each stand alone."""
        if self.dialect == "sqlite":
            raise ValueError("run_statement is for PostgreSQL")
        async with self._autocommit.connect() as conn:
            return await conn.run_sync(fn)

    async def run_raw(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """SQLite only: `fn` on the writer's stdlib connection, as `run_write` (no SQLAlchemy)."""
        if self.dialect != "sqlite":
            raise ValueError("run_raw is for SQLite")
        result: T = await self._sqlite_writer().submit(_RAW, fn)
        return result

    def add(self, batch: Batch[Item, Result], item: Item) -> Awaitable[Result]:
        """SQLite only: queue `item` for `batch`; the answer is its result once committed. The
        write goes ahead if the waiter is cancelled."""
        if self.dialect != "sqlite":
            raise ValueError("batches are for SQLite")
        return self._sqlite_writer().submit(batch, item)

    async def aclose(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.submit(_CLOSE, None)
            writer.thread.join(timeout=5)
        await self.engine.dispose()


def _pragmas(conn: Any, busy_ms: int) -> None:
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={busy_ms}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    # Another process's commit empties this connection's page cache (several workers share
    # the file): mapped pages are re-read without a copy, which measurably cuts the CPU.
    cur.execute("PRAGMA mmap_size=268435456")
    cur.close()


def _sqlite_discipline(engine: Engine, busy_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below); pysqlite's implicit BEGIN is deferred, which lets two
        # processes both read a counter before either writes it.
        dbapi_conn.isolation_level = None
        _pragmas(dbapi_conn, busy_ms)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")
