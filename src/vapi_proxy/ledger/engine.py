"""One async SQLAlchemy engine over SQLite (WAL) or PostgreSQL, shared by the ledger and limits.

SQLite writers take the database lock up front (`BEGIN IMMEDIATE`) so a read-then-write is atomic
across processes, and an in-process lock queues them so waiting happens on the event loop, not in
SQLite's busy handler.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")

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

    def flush(self, conn: Connection) -> object:
        """Inside a write transaction: write what is pending; returns a token for `restore`."""
        ...

    def restore(self, token: object) -> None:
        """That transaction failed: what `flush` wrote must be written again later."""
        ...


def redact(url: str) -> str:
    """The URL with any password hidden, for logs and health output."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL is not worth a crash in a log line
        return "<database url>"


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
            kwargs["pool_size"] = 5
            kwargs["max_overflow"] = 5
            # A burst queues for a pooled connection rather than failing: each statement is
            # still bounded by `command_timeout`, and refusing a burst as "store down" would
            # turn load into 503s.
            kwargs["pool_timeout"] = max(30.0, timeout)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        self._timeout = timeout
        self._sync: Engine | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._companions: list[Companion] = []
        if self.dialect == "sqlite":
            _sqlite_discipline(self.engine.sync_engine, int(timeout * 1000))

    def attach(self, companion: Companion) -> None:
        """Have every write transaction on SQLite also flush `companion`'s pending state."""
        self._companions.append(companion)

    def detach(self, companion: Companion) -> None:
        if companion in self._companions:
            self._companions.remove(companion)

    def _flush(self, conn: Connection) -> list[tuple[Companion, object]]:
        return [(c, c.flush(conn)) for c in list(self._companions)]

    @staticmethod
    def _restore(tokens: list[tuple[Companion, object]]) -> None:
        for companion, token in tokens:
            companion.restore(token)

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

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that may write: serialised in-process on SQLite, committed on exit."""
        if self.dialect != "sqlite":
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock:
            tokens: list[tuple[Companion, object]] = []
            try:
                async with self.engine.begin() as conn:
                    if self._companions:
                        tokens = await conn.run_sync(self._flush)
                    yield conn
            except BaseException:
                self._restore(tokens)
                raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (a deferred one on SQLite: readers never block writers)."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(sqlite_begin="DEFERRED")
            async with conn.begin():
                yield conn

    async def run_write(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in one write transaction, committed when it returns, rolled back if it
        raises. SQLite: the whole transaction runs on one writer thread with the stdlib driver
        (one hop off the event loop instead of one per statement, and writes queue in-process);
        PostgreSQL: on the async engine."""
        if self.dialect != "sqlite":
            async with self.engine.begin() as conn:
                return await conn.run_sync(fn)
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="vapi-proxy-sqlite")
        # The same in-process lock as `write()`: writes through either path queue here, never
        # in SQLite's busy handler (which sleeps up to 100 ms between tries).
        async with self._write_lock:
            loop = asyncio.get_running_loop()
            tokens: list[tuple[Companion, object]] = []
            try:
                return await loop.run_in_executor(self._writer, self._sync_tx, fn, tokens)
            except BaseException:
                self._restore(tokens)
                raise

    def _sync_tx(self, fn: Callable[[Connection], T], tokens: list[tuple[Companion, object]]) -> T:
        if self._sync is None:
            sync_url = make_url(self.url).set(drivername="sqlite")
            self._sync = create_engine(sync_url, connect_args={"timeout": self._timeout})
            _sqlite_discipline(self._sync, int(self._timeout * 1000))
        with self._sync.begin() as conn:
            if self._companions:
                tokens.extend(self._flush(conn))
            return fn(conn)

    async def aclose(self) -> None:
        if self._writer is not None:
            if self._sync is not None:
                await asyncio.get_running_loop().run_in_executor(self._writer, self._sync.dispose)
            self._writer.shutdown(wait=True)
            self._writer = None
        await self.engine.dispose()


def _sqlite_discipline(engine: Engine, busy_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below); pysqlite's implicit BEGIN is deferred, which lets two
        # processes both read a counter before either writes it.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        # Another process's commit empties this connection's page cache (several workers share
        # the file): mapped pages are re-read without a copy, which measurably cuts the CPU.
        cur.execute("PRAGMA mmap_size=268435456")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")
