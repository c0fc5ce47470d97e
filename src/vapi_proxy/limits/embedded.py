"""The embedded default: in-process counters, kept as a cache of durable state in a SQLite file
(the ledger's), shared exactly by every worker on the machine and rebuilt at start.

The durable state is an append-only log (`limit_log`) of what each reservation took and gave
back, plus a snapshot (`limit_state`) that the log is periodically folded into. Each process
keeps a `CounterState` and the number of the last log entry it has applied:

- reserve: one write transaction per batch of concurrent reservations (group commit). Holding
  SQLite's write lock, it applies the entries other workers appended since, checks and takes
  in memory, and appends one entry per admission. Every worker checks against every admission
  made before it, so a burst across workers admits exactly the limit.
- commit, release, settle: applied in memory at once and appended with the next write on the
  database, which is usually the ledger's own (the call row, the webhook event): one write,
  not two. A release waits for its write. The ledger rows are the durable record of commits
  and settlements in any case: at start, the open reservations are matched with their calls
  (`calls.reservation_id`), and those that ended are settled from the row.
- expire (the periodic upkeep) appends which reservations it expired, so all workers agree, and
  now and then writes a snapshot and drops the log before it. The snapshot is a copy of the
  state taken inside that transaction (milliseconds: records are immutable tuples), serialised
  afterwards on the event loop in pieces, and stored in a transaction of its own, over an older
  snapshot only; the entries logged meanwhile come after its sequence number and stay.

A worker that missed log entries folded into a snapshot (it was idle through a compaction)
notices the gap in sequence numbers and reloads the snapshot. Every logged operation is
idempotent (a reservation taken twice, a commit or settle repeated, changes nothing more), so a
write retried after an unclear failure is harmless.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy import Connection

from vapi_proxy.ledger.engine import Batch, Database, async_url, raw_connection, redact
from vapi_proxy.ledger.schema import limit_log, limit_state
from vapi_proxy.limits.config import LimitsSettings
from vapi_proxy.limits.core import (
    MICRO_USD,
    MS_PER_SECOND,
    SLIDING_BUCKETS,
    Plan,
    Shortfall,
    StoreUnavailableError,
)
from vapi_proxy.limits.memory import (
    FINISHED,
    LIVE,
    SLOT_KEYS,
    STATE,
    CounterState,
    Frozen,
    hold_rows,
)

T = TypeVar("T")
log = logging.getLogger(__name__)
MAX_BATCH = 256
FLUSH_DELAY_SECONDS = 0.02
"""Buffered commits and settlements wait at most this long for another write to ride on."""
SNAPSHOT_ENTRIES = 2000
SNAPSHOT_SECONDS = 300.0
SNAPSHOT_KEEP_ENTRIES = 2000
"""Log entries kept before a snapshot's, for workers a little behind (they catch up from the
log instead of reloading the snapshot)."""
SNAPSHOT_CHUNK = 1000
"""Records serialised (and compressed) per piece of a snapshot: one piece holds the event loop
a few milliseconds, and other work runs between pieces."""
TRIM_CHUNK = 2000
"""Log entries dropped per transaction after a snapshot: dropping a day's entries at once
(68 ms for 43,000, 181 ms for 110,000, measured) held every reservation meanwhile."""
SNAPSHOT_LEVEL = 1
"""zlib level of stored snapshots. The JSON repeats its keys (every hold names its counter): at
level 1 a snapshot of 20,000 reservations is 28 times smaller (14.9 MB → 0.53 MB, 27 ms), and
storing it is that much shorter a transaction (118 ms uncompressed, in which every reservation
waited)."""
_RECONCILE_CHUNK = 500
OPEN = ("pending", "committed", "expired", "ended")

_INSERT = (
    "INSERT INTO limit_log (namespace, seq, writer, entry) VALUES (?, (SELECT coalesce(max(seq), "
    "0) + 1 FROM limit_log WHERE namespace = ?), ?, ?)"
)
_INSERT_AT = "INSERT INTO limit_log (namespace, seq, writer, entry) VALUES (?, ?, ?, ?)"
_SINCE = "SELECT seq, writer, entry FROM limit_log WHERE namespace = ? AND seq > ? ORDER BY seq"
_STATE = "SELECT seq, state FROM limit_state WHERE namespace = ?"
# Over an older snapshot only: another worker may have stored a newer one meanwhile.
_SNAPSHOT = (
    "INSERT INTO limit_state (namespace, seq, state, written_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (namespace) DO UPDATE SET seq = excluded.seq, state = excluded.state, "
    "written_at = excluded.written_at WHERE excluded.seq > limit_state.seq"
)
_STORED = (
    "SELECT (SELECT seq FROM limit_state WHERE namespace = ?), "
    "(SELECT min(seq) FROM limit_log WHERE namespace = ?)"
)
_TRIM = "DELETE FROM limit_log WHERE namespace = ? AND seq < ?"


@dataclass(slots=True)
class _Ask:
    rid: str
    plan: Plan
    now: float
    expires_at: float
    keep_until: float


class _Reserves(Batch[_Ask, list[Shortfall]]):
    """Reservations, a batch kind of the database's writer: those queued meanwhile share one
    transaction (with the ledger's call rows, when they queued too)."""

    def __init__(self, store: EmbeddedStore) -> None:
        self._store = store

    def write(self, conn: sqlite3.Connection, items: list[_Ask]) -> list[list[Shortfall]]:
        return self._store._reserve(conn, items)

    def failed(self, items: list[_Ask]) -> None:
        self._store._undo(items)


def _dumps(entry: list[Any]) -> str:
    # orjson: the same compact JSON as json.dumps(separators=(",", ":")), a few times faster;
    # every worker writes and reads an entry per admission.
    return orjson.dumps(entry).decode()


def _dumps_part(part: dict[str, Any]) -> bytes:
    return orjson.dumps(part)


def snapshot_pieces(frozen: Frozen) -> Iterator[bytes]:
    """A snapshot's JSON in pieces of about `SNAPSHOT_CHUNK` entries (counters, slots or
    records): joined, byte for byte `orjson.dumps(state.dump())` of the state `frozen` was
    taken from. orjson writes tuples as arrays, so a record is written as it is held, without
    the lists `dump` builds."""
    yield b'{"counters":{'
    yield from _members(iter(frozen.counters.items()), _same)
    yield b'},"slots":{'
    yield from _slot_members(frozen.slots)
    yield b'},"records":{'
    yield from _members(iter(frozen.records.items()), _kept)
    yield b"}}"


def _same(value: Any) -> Any:
    return value


def _kept(rec: Any) -> Any:
    """A record as a snapshot holds it (without its slot keys); None: left out (finished)."""
    return None if rec[STATE] in FINISHED else rec[:SLOT_KEYS]


def _members(items: Iterator[tuple[str, Any]], value: Callable[[Any], Any]) -> Iterator[bytes]:
    """An object's members (`"key":value`, comma-separated, without the braces), at most
    `SNAPSHOT_CHUNK` a piece; `value` gives what to write of each, or None to leave it out.
    The collector is off while a piece is built (there is no await inside): the tuples it
    makes would otherwise set off collections that walk the whole heap."""
    separator = b""
    while True:
        collecting = gc.isenabled()
        gc.disable()
        try:
            taken = 0
            part: dict[str, Any] = {}
            for key, held in islice(items, SNAPSHOT_CHUNK):
                taken += 1
                written = value(held)
                if written is not None:
                    part[key] = written
            piece = _dumps_part(part)[1:-1] if part else b""
            del part
        finally:
            if collecting:
                gc.enable()
        if piece:
            yield separator + piece
            separator = b","
        if taken < SNAPSHOT_CHUNK:
            return


def _slot_members(slots: dict[str, dict[str, float]]) -> Iterator[bytes]:
    """The slots' members: keys with few live slots gathered into a piece, a key with many (a
    tenant's or the whole service's concurrency) split over pieces of its own."""
    separator = b""
    gathered: dict[str, dict[str, float]] = {}
    size = 0
    for key, live in slots.items():
        if len(live) < SNAPSHOT_CHUNK:
            gathered[key] = live
            size += len(live)
            if size < SNAPSHOT_CHUNK:
                continue
        if gathered:
            yield separator + _dumps_part(gathered)[1:-1]
            separator = b","
            gathered, size = {}, 0
        if len(live) >= SNAPSHOT_CHUNK:
            pieces = _members(iter(live.items()), _same)
            yield separator + orjson.dumps(key) + b":{" + next(pieces)
            yield from pieces
            yield b"}"
            separator = b","
    if gathered:
        yield separator + _dumps_part(gathered)[1:-1]


def read_snapshot(stored: str | bytes) -> Any:
    """A stored snapshot's data: zlib-compressed JSON (a blob), or JSON text as snapshots were
    stored before they were compressed (and as `write_snapshot` stores a migrated state)."""
    return orjson.loads(zlib.decompress(stored) if isinstance(stored, bytes) else stored)


async def _between_pieces() -> None:
    """Other work runs between two pieces of a snapshot."""
    await asyncio.sleep(0)


class EmbeddedStore:
    """A `LimitStore` over a SQLite file; see the module docstring."""

    def __init__(self, settings: LimitsSettings, *, database: Database | None = None) -> None:
        if database is None:
            self._db = Database(settings.backend, timeout=settings.timeout_seconds)
            self._owns_db = True
        else:
            if settings.backend.startswith("sqlite") and database.url != async_url(
                settings.backend
            ):
                raise ValueError("the shared database's URL differs from limits.backend")
            self._db, self._owns_db = database, False
        if self._db.dialect != "sqlite":
            raise ValueError("the embedded limits store needs a SQLite database")
        self.name = f"embedded ({redact(self._db.url)})"
        self._ns = settings.namespace
        self._writer = uuid.uuid4().hex[:16]
        self._state = CounterState()
        self._seq = 0
        self._snapshot_seq = 0
        self._snapshot_at = time.monotonic()
        self._snapshotting = False
        # The state is changed on the event loop (commit, settle) and on the database's writer
        # thread (reserve, catching up); one lock keeps each change whole.
        self._lock = threading.Lock()
        self._buffer: list[list[Any]] = []
        self._reserves = _Reserves(self)
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._ready = False
        self._ready_lock = asyncio.Lock()
        # In the ledger's file the call and event rows are the durable record of commits and
        # settlements; in a file of its own they must be written before the caller moves on.
        self._beside_ledger = True
        self._db.attach(self)

    # --- the database's companion: buffered entries ride on any write ----------------------

    def flush(self, conn: sqlite3.Connection) -> object:
        with self._lock:
            entries, self._buffer = self._buffer, []
        if entries:
            self._append(conn, entries)
        return entries

    def restore(self, token: object) -> None:
        entries = token if isinstance(token, list) else []
        if entries:
            with self._lock:
                self._buffer[:0] = entries
            self._schedule_flush()

    def _buffered(self, entry: list[Any]) -> None:
        self._buffer.append(entry)

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._flush_timer is None:
            self._flush_timer = loop.call_later(FLUSH_DELAY_SECONDS, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_timer = None
        if self._buffer and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.get_running_loop().create_task(self._flush_now())

    async def _flush_now(self) -> None:
        """A write with nothing of its own, so the buffer (written by the hook) is durable."""
        try:
            await self._db.run_raw(_nothing)
        except Exception:  # restored by the hook; the next write or timer tries again
            self._schedule_flush()

    # --- the log ---------------------------------------------------------------------------

    def _append(self, conn: sqlite3.Connection, entries: Sequence[list[Any]]) -> None:
        conn.executemany(_INSERT, [(self._ns, self._ns, self._writer, _dumps(e)) for e in entries])

    def _append_next(self, conn: sqlite3.Connection, entries: Sequence[list[Any]]) -> None:
        """Append after the last entry, which this process has just read (holding the lock,
        caught up, inside the transaction that holds SQLite's write lock)."""
        first = self._seq + 1
        conn.executemany(
            _INSERT_AT,
            [(self._ns, first + i, self._writer, _dumps(e)) for i, e in enumerate(entries)],
        )
        self._seq = first + len(entries) - 1

    def _apply(self, e: list[Any]) -> None:
        st = self._state
        op = e[0]
        if op == "r":
            _, rid, now, expires_at, keep_until, holds = e[:6]
            if rid not in st.records:
                if len(e) == 7:  # the first format: [rule, what, key, amount] + {key: until}
                    holds = [[w, k, n, e[6].get(k, 0)] for _, w, k, n in holds]
                rows = tuple([("", what, key, n) for what, key, n, _ in holds])
                untils = {key: until for _, key, _, until in holds}
                st.take(rid, rows, untils, now=now, expires_at=expires_at, keep_until=keep_until)
        elif op == "c":
            st.commit(e[1], e[2])
        elif op == "x":
            st.release(e[1], e[2])
        elif op == "s":
            st.settle(e[1], e[2], e[3], e[4])
        elif op == "e":
            st.mark_expired(e[1])
            st.gc(e[2])

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        """Apply what other workers logged since; reload the snapshot after a gap. Holds the
        lock; inside a transaction."""
        rows = conn.execute(_SINCE, (self._ns, self._seq)).fetchall()
        if rows and rows[0][0] != self._seq + 1:
            self._reload(conn)
            return
        for seq, writer, entry in rows:
            if writer != self._writer:  # this process applied its own entries when it made them
                self._apply(orjson.loads(entry))
            self._seq = seq

    def _reload(self, conn: sqlite3.Connection) -> None:
        self._state = CounterState()
        self._seq = 0
        row = conn.execute(_STATE, (self._ns,)).fetchone()
        if row is not None:
            self._state.load(read_snapshot(row[1]))
            self._seq = self._snapshot_seq = int(row[0])
        for seq, _, entry in conn.execute(_SINCE, (self._ns, self._seq)).fetchall():
            self._apply(orjson.loads(entry))  # this process's entries too: the state is new
            self._seq = seq
        for entry in self._buffer:  # applied here, not yet written
            self._apply(entry)

    def _snapshot_due(self) -> bool:
        """Fold the log (every `SNAPSHOT_ENTRIES` entries or `SNAPSHOT_SECONDS`) once it is
        longer than the state a snapshot would hold. A snapshot costs in proportion to that
        state (every reservation not yet settled: a day of calls whose end never came), so
        folding a short log into a big state each upkeep would spend far more than the entries
        it folds. This way the snapshots cost no more than the entries they fold, and a start
        replays at most as many entries as the snapshot holds records."""
        logged = self._seq - self._snapshot_seq
        old = time.monotonic() - self._snapshot_at > SNAPSHOT_SECONDS
        return (old or logged >= SNAPSHOT_ENTRIES) and logged >= len(self._state.records)

    async def _snapshot(self, seq: int, frozen: Frozen, now: float) -> None:
        """Fold the log into a snapshot: `frozen` is the state as of log entry `seq`, copied
        inside the transaction that read up to it. Serialising it costs in proportion to the
        state (a second and more at 150,000 held reservations), so it is done here, on the
        event loop in pieces with other work between them, and not inside the writer's
        transaction, which every reservation waits for; compressed, the snapshot is then
        stored in a short transaction of its own. Entries logged meanwhile are numbered after
        `seq` and kept: replaying them over the snapshot is harmless (every logged operation
        is idempotent)."""
        try:
            packer = zlib.compressobj(SNAPSHOT_LEVEL)
            packed = []
            for piece in snapshot_pieces(frozen):
                packed.append(packer.compress(piece))
                await _between_pieces()
            packed.append(packer.flush())
            del frozen
            state = b"".join(packed)
            stored, oldest = await self._write(
                lambda conn: self._store_snapshot(conn, seq, state, now)
            )
            # Keep the last entries before the stored snapshot: the next one is numbered after
            # them, a worker a little behind (another worker writes between two of ours)
            # catches up from them, and one further behind sees the gap and reloads. Trimming
            # to the last entry made the other worker reload the whole snapshot after nearly
            # every one (0.4-1.1 s in its transaction).
            end = stored - SNAPSHOT_KEEP_ENTRIES
            if oldest is not None:
                for bound in range(oldest + TRIM_CHUNK, end + TRIM_CHUNK, TRIM_CHUNK):
                    await self._write(partial(self._trim, min(bound, end)))
        except (StoreUnavailableError, *_DOWN) as exc:
            # The log still holds everything; the next upkeep tries again.
            log.warning("limits: snapshot not written: %s", exc)
        finally:
            self._snapshotting = False

    def _store_snapshot(
        self, conn: sqlite3.Connection, seq: int, state: bytes, now: float
    ) -> tuple[int, int | None]:
        """Store the snapshot over an older one (another worker may have stored a newer one
        meanwhile): the stored snapshot's number and the log's first."""
        conn.execute(_SNAPSHOT, (self._ns, seq, state, now))
        stored, oldest = conn.execute(_STORED, (self._ns, self._ns)).fetchone()
        with self._lock:
            self._snapshot_seq = max(self._snapshot_seq, seq)
            self._snapshot_at = time.monotonic()
        return int(stored), None if oldest is None else int(oldest)

    def _trim(self, before: int, conn: sqlite3.Connection) -> None:
        """Drop the log entries numbered before `before` (a stored snapshot holds them)."""
        conn.execute(_TRIM, (self._ns, before))

    # --- start-up ----------------------------------------------------------------------------

    async def _ensure(self, now: float) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            self._db.check_reachable()
            await self._db.run_write(lambda conn: self._start(conn, now))
            self._ready = True

    def _start(self, conn: Connection, now: float) -> None:
        inspector = sa.inspect(conn)
        if not inspector.has_table("limit_log"):
            # A limits file of its own (not the ledger's, whose migrations create these).
            limit_log.create(conn)
            limit_state.create(conn)
            if inspector.has_table("limit_reservations"):
                check_legacy(inspector)
                for namespace, state in legacy_states(conn).items():
                    write_snapshot(conn, namespace, state, now)
        with self._lock:
            self._reload(raw_connection(conn))
            self._beside_ledger = inspector.has_table("calls")
            if self._beside_ledger:
                entries = self._reconcile(conn, now)
                if entries:
                    self._append(raw_connection(conn), entries)

    def _reconcile(self, conn: Connection, now: float) -> list[list[Any]]:
        """Commits and settlements the ledger has and the log may not (a worker killed before
        its buffer was written): match open reservations with their calls."""
        st = self._state
        open_rids = [rid for rid, rec in st.records.items() if rec[STATE] in OPEN]
        entries: list[list[Any]] = []
        for i in range(0, len(open_rids), _RECONCILE_CHUNK):
            chunk = open_rids[i : i + _RECONCILE_CHUNK]
            rows = conn.execute(
                sa.text(
                    "SELECT id, reservation_id, kind, status, duration_seconds, cost_usd "
                    "FROM calls WHERE reservation_id IN :rids"
                ).bindparams(sa.bindparam("rids", expanding=True)),
                {"rids": chunk},
            )
            for call_id, rid, kind, status, seconds, cost in rows:
                rec = st.records.get(rid)
                if rec is None:
                    continue
                if rec[STATE] == "pending" and st.commit(rid, call_id):
                    entries.append(["c", rid, call_id])
                if status != "ended":
                    continue
                if seconds is None and kind == "chat":
                    seconds = 0.0  # as the chat route settles a turn
                ms = None if seconds is None else max(0, round(seconds * MS_PER_SECOND))
                micro = None if cost is None else max(0, round(cost * MICRO_USD))
                if st.settle(call_id, ms, micro, now):
                    entries.append(["s", call_id, ms, micro, now])
        return entries

    # --- the LimitStore methods ---------------------------------------------------------------

    async def reserve(
        self, rid: str, plan: Plan, *, now: float, expires_at: float, keep_until: float
    ) -> list[Shortfall]:
        await self._ensure_or_unavailable(now)
        try:
            return await self._db.add(self._reserves, _Ask(rid, plan, now, expires_at, keep_until))
        except _DOWN as exc:
            raise _unavailable(exc) from exc

    def _reserve(self, conn: sqlite3.Connection, batch: Sequence[_Ask]) -> list[list[Shortfall]]:
        results: list[list[Shortfall]] = []
        entries: list[list[Any]] = []
        with self._lock:
            self._catch_up(conn)
            for ask in batch:
                short = self._state.check(ask.plan, ask.now)
                results.append(short)
                if short:
                    continue
                untils = {c.hold.key: ask.now + c.ttl for c in ask.plan.counters}
                rows = hold_rows(ask.plan.holds)
                self._state.take(
                    ask.rid,
                    rows,
                    untils,
                    now=ask.now,
                    expires_at=ask.expires_at,
                    keep_until=ask.keep_until,
                )
                # What each hold took and (counters) until when: all another worker needs.
                took = [[what, key, n, untils.get(key, 0)] for _, what, key, n in rows]
                entries.append(["r", ask.rid, ask.now, ask.expires_at, ask.keep_until, took])
            if entries:
                self._append_next(conn, entries)
        return results

    def _undo(self, batch: Sequence[_Ask]) -> None:
        """The batch's transaction failed: what it took in memory was never written."""
        with self._lock:
            for ask in batch:
                rec = self._state.records.get(ask.rid)
                if rec is not None and rec[STATE] == "pending":
                    self._state.release(ask.rid, ask.now)  # gives back and forgets it

    async def commit(self, rid: str, call_id: str, *, now: float) -> None:
        with self._lock:
            changed = self._state.commit(rid, call_id)
            if changed:
                self._buffered(["c", rid, call_id])
        await self._settled_or_scheduled(changed)

    async def _settled_or_scheduled(self, changed: bool) -> None:
        if changed and not self._beside_ledger:
            await self._write(_nothing)
        else:
            self._schedule_flush()

    async def release(self, rid: str, *, now: float) -> None:
        with self._lock:
            changed = self._state.release(rid, now)
            if changed:
                self._buffered(["x", rid, now])
        if changed:
            # Durable before the caller moves on: a lost release would keep the quota taken.
            await self._write(_nothing)

    async def settle(
        self, call_id: str, *, actual_ms: int | None, actual_micro_usd: int | None, now: float
    ) -> None:
        await self._ensure_or_unavailable(now)
        with self._lock:
            changed = self._state.settle(call_id, actual_ms, actual_micro_usd, now)
            if changed:
                self._buffered(["s", call_id, actual_ms, actual_micro_usd, now])
        await self._settled_or_scheduled(changed)

    async def expire(self, now: float) -> list[str | None]:
        await self._ensure_or_unavailable(now)

        def tx(conn: sqlite3.Connection) -> tuple[list[str | None], Frozen | None, int]:
            frozen = None
            with self._lock:
                self._catch_up(conn)
                due = self._state.due(now)
                freed = self._state.mark_expired(due)
                self._state.gc(now)
                self._append_next(conn, [["e", due, now]])
                # Caught up, holding SQLite's write lock: the state is that of the whole log.
                if not self._snapshotting and self._snapshot_due():
                    self._snapshotting = True
                    frozen = self._state.freeze()
                seq = self._seq
            return freed, frozen, seq

        freed, frozen, seq = await self._write(tx)
        if frozen is not None:
            await self._snapshot(seq, frozen, now)
        return freed

    async def peek(
        self, keys: Sequence[str], slot_keys: Sequence[str], *, now: float
    ) -> tuple[dict[str, int], dict[str, tuple[int, float | None]]]:
        await self._ensure_or_unavailable(now)

        def tx(
            conn: sqlite3.Connection,
        ) -> tuple[dict[str, int], dict[str, tuple[int, float | None]]]:
            with self._lock:
                self._catch_up(conn)
                return self._state.peek(keys, slot_keys, now)

        return await self._write(tx)

    async def ping(self) -> None:
        # The readiness probe: the first one rebuilds the counters, before any caller waits.
        await self._ensure_or_unavailable(time.time())
        await self._write(lambda conn: conn.execute("SELECT 1"))

    async def aclose(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._buffer:
            try:
                await self._db.run_raw(_nothing)
            except Exception as exc:  # the ledger rows still say what the buffer did
                log.warning("limits: buffered entries not written at close: %s", exc)
        self._db.detach(self)
        if self._owns_db:
            await self._db.aclose()

    async def _ensure_or_unavailable(self, now: float) -> None:
        try:
            await self._ensure(now)
        except _DOWN as exc:
            raise _unavailable(exc) from exc

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.run_raw(fn)
        except _DOWN as exc:
            raise _unavailable(exc) from exc


def _nothing(conn: sqlite3.Connection) -> None:
    """A write of nothing of its own: the transaction writes the buffered entries."""


_DOWN = (sa.exc.SQLAlchemyError, sqlite3.Error, OSError, TimeoutError)


def _unavailable(exc: BaseException) -> BaseException:
    if isinstance(exc, _DOWN):
        return StoreUnavailableError(f"{type(exc).__name__}: {exc}"[:300])
    return exc


# --- upgrading from the SQL store's tables -------------------------------------------------------

_RATE = re.compile(r"^(?P<prefix>.*:rate:(?P<period>second|minute|hour):)(?P<start>\d+(\.\d+)?)$")
_SIZES = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


_LEGACY = {
    "limit_reservations": {
        "id", "namespace", "call_key", "state", "expires_at", "keep_until", "holds", "applied"
    },
    "limit_counters": {"key", "value", "expires_at"},
    "limit_slots": {"key", "reservation_id", "expires_at"},
}  # fmt: skip


def check_legacy(inspector: Any) -> None:
    """Raise LimitsSchemaError if the SQL store's tables are not the shape `legacy_states` reads."""
    from vapi_proxy.limits.sql import LimitsSchemaError

    for table, columns in _LEGACY.items():
        exists = inspector.has_table(table)
        have = {c["name"] for c in inspector.get_columns(table)} if exists else set()
        missing = sorted(columns - have)
        if missing:
            raise LimitsSchemaError(
                f"table {table} lacks {', '.join(missing)}: it is from an older vapi-proxy "
                "than the one whose counts can be carried over. Drop limit_counters, "
                "limit_slots and limit_reservations (counters start again from zero) and "
                "restart."
            )


def legacy_states(conn: Connection) -> dict[str, dict[str, Any]]:
    """The counters, slots and reservations of the SQL limits store (limit_counters,
    limit_slots, limit_reservations), as one `CounterState.dump()` per namespace, so an upgrade
    keeps every count. A fixed rate window becomes the sliding bucket it started in."""
    reservations = conn.exec_driver_sql(
        "SELECT id, namespace, call_key, state, expires_at, keep_until, holds, applied "
        "FROM limit_reservations"
    ).fetchall()
    namespaces = sorted({r[1] for r in reservations} | {"vapi-proxy"}, key=len, reverse=True)

    def namespace_of(key: str) -> str:
        for ns in namespaces:
            if key.startswith(ns + ":"):
                return ns
        return key.split(":", 1)[0]

    states: dict[str, CounterState] = {}

    def state(ns: str) -> CounterState:
        return states.setdefault(ns, CounterState())

    for key, value, expires_at in conn.exec_driver_sql(
        "SELECT key, value, expires_at FROM limit_counters"
    ):
        match = _RATE.match(key)
        if match is not None:
            size = _SIZES[match["period"]] / SLIDING_BUCKETS
            key = f"{match['prefix']}{int(float(match['start']) // size)}"
        st = state(namespace_of(key))
        old, until = st.counters.get(key, (0, 0.0))
        st.counters[key] = (old + int(value), max(until, float(expires_at)))
    for key, rid, expires_at in conn.exec_driver_sql(
        "SELECT key, reservation_id, expires_at FROM limit_slots"
    ):
        state(namespace_of(key)).slots.setdefault(key, {})[rid] = float(expires_at)
    for rid, ns, call_key, st_name, expires_at, keep_until, holds, applied in reservations:
        if st_name in ("released", "settled"):
            continue
        call_id = call_key[len(ns) + 1 :] if call_key else None
        state(ns).load_record(
            rid,
            # [what, key, amount] as the SQL store wrote them (a leading rule name is tolerated).
            [["", *h[-3:-1], int(h[-1])] for h in json.loads(holds)],
            float(expires_at),
            float(keep_until),
            st_name,
            call_id,
            applied or "",
        )
    return {ns: st.dump() for ns, st in states.items()}


def write_snapshot(conn: Connection, namespace: str, state: dict[str, Any], now: float) -> None:
    conn.execute(
        limit_state.insert().values(
            namespace=namespace, seq=0, state=json.dumps(state), written_at=now
        )
    )


__all__ = ["LIVE", "EmbeddedStore", "check_legacy", "legacy_states", "write_snapshot"]
