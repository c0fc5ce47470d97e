"""Limits store in PostgreSQL: one transaction per reservation, correct across replicas.

A reservation is one call to a PL/pgSQL function that upserts every counter row it needs, which
locks them in key order, so concurrent reservations on the same counters queue instead of
racing, and never deadlock. A release or settlement is decided from the reservation as read and
applied by another function only if it is still as read; no transaction holds a caller's
counter rows across a round trip. (SQLite has the embedded store, `embedded.py`; these tables' shape
is still read once from SQLite files, to carry an older version's counts over.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import Connection

from vapi_proxy.ledger.engine import Database, async_url, redact
from vapi_proxy.limits.config import LimitsSettings
from vapi_proxy.limits.core import (
    SETTLEABLE,
    Plan,
    Shortfall,
    true_up,
)
from vapi_proxy.limits.deadline import unavailable_on

metadata = sa.MetaData()

counters = sa.Table(
    "limit_counters",
    metadata,
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)
slots = sa.Table(
    "limit_slots",
    metadata,
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("reservation_id", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index("ix_limit_slots_reservation", "reservation_id"),
)
reservations = sa.Table(
    "limit_reservations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("namespace", sa.String(128), nullable=False),
    sa.Column("call_key", sa.String(512), unique=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("keep_until", sa.Float, nullable=False),
    sa.Column("holds", sa.Text, nullable=False),
    sa.Column("applied", sa.String(8), nullable=False, server_default=""),
    sa.Index("ix_limit_reservations_expiry", "namespace", "state", "expires_at"),
)

LIVE = ("pending", "committed")

_PG_CALL = sa.text(
    "SELECT idx, cur, earliest FROM vapi_limits_reserve(:ak, :ax, :k, :a, :l, :f, :wk, :wn, "
    ":sk, :sl, :rid, :ns, :now, :exp, :keep, :holds)"
)

# Built once: constructing SQLAlchemy statements per call costs more than executing them.
_COMMIT_STMT = (
    reservations.update()
    .where(reservations.c.id == sa.bindparam("rid"), reservations.c.state == "pending")
    .values(state="committed", call_key=sa.bindparam("ck"))
)
_LOCKED_COLS = (
    reservations.c.id,
    reservations.c.state,
    reservations.c.holds,
    reservations.c.applied,
)
_LOCK_BY_ID = (
    sa.select(*_LOCKED_COLS).where(reservations.c.id == sa.bindparam("v")).with_for_update()
)
_LOCK_BY_CALL = (
    sa.select(*_LOCKED_COLS).where(reservations.c.call_key == sa.bindparam("v")).with_for_update()
)
_READ_BY_ID = sa.select(*_LOCKED_COLS).where(reservations.c.id == sa.bindparam("v"))
_READ_BY_CALL = sa.select(*_LOCKED_COLS).where(reservations.c.call_key == sa.bindparam("v"))
_PG_FINISH_CALL = sa.text(
    "SELECT vapi_limits_finish(:rid, :old_state, :old_applied, :st, :ap, :k, :d)"
)
_DELETE_SLOTS = slots.delete().where(slots.c.reservation_id == sa.bindparam("rid"))
_SET_STATE = (
    reservations.update()
    .where(reservations.c.id == sa.bindparam("rid"))
    .values(state=sa.bindparam("st"), applied=sa.bindparam("ap"))
)
_NEW = counters.c.value + sa.bindparam("d")
_ADJUST = (
    counters.update()
    .where(counters.c.key == sa.bindparam("k"))
    .values(value=sa.case((_NEW < 0, 0), else_=_NEW))
)

# PostgreSQL does a whole reservation server-side in one call, so the counter rows are locked
# for the function's run (well under a millisecond) rather than across several round trips:
# under a burst on one identity, that lock is what every reservation queues for.
_PG_RESERVE = """
CREATE OR REPLACE FUNCTION vapi_limits_reserve(
    p_anchor_keys text[], p_anchor_expires double precision[],
    p_keys text[], p_amounts bigint[], p_limits bigint[], p_fits boolean[],
    p_win_keys text[], p_win_n integer[],
    p_slot_keys text[], p_slot_limits bigint[],
    p_rid text, p_ns text, p_now double precision, p_expires_at double precision,
    p_keep_until double precision, p_holds text
) RETURNS TABLE(idx integer, cur bigint, earliest double precision)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    w integer := 1;
    v bigint;
    n bigint;
    e double precision;
    refused boolean := false;
BEGIN
    -- Create missing rows and lock all of them, in key order (the caller sorts the keys).
    INSERT INTO limit_counters AS c (key, value, expires_at)
        SELECT k, 0, x FROM unnest(p_anchor_keys, p_anchor_expires) AS t(k, x)
        ON CONFLICT (key) DO UPDATE SET value = c.value;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        SELECT value INTO v FROM limit_counters WHERE key = p_keys[i];
        -- A sliding rate window also counts its earlier buckets (read, not locked: they can
        -- only go down meanwhile, by a release).
        IF p_win_n[i] > 0 THEN
            SELECT v + coalesce(sum(c.value), 0) INTO v FROM limit_counters c
                WHERE c.key = ANY(p_win_keys[w : w + p_win_n[i] - 1]);
            w := w + p_win_n[i];
        END IF;
        IF (p_fits[i] AND v + p_amounts[i] > p_limits[i])
                OR (NOT p_fits[i] AND v >= p_limits[i]) THEN
            refused := true;
            idx := i - 1; cur := v; earliest := NULL;
            RETURN NEXT;
        END IF;
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(p_slot_keys, 1), 0) LOOP
        SELECT count(*), min(s.expires_at) INTO n, e FROM limit_slots s
            WHERE s.key = p_slot_keys[i] AND s.expires_at > p_now;
        IF n >= p_slot_limits[i] THEN
            refused := true;
            idx := coalesce(array_length(p_keys, 1), 0) + i - 1; cur := n; earliest := e;
            RETURN NEXT;
        END IF;
    END LOOP;
    IF refused THEN
        RETURN;
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        IF p_amounts[i] <> 0 THEN
            UPDATE limit_counters SET value = value + p_amounts[i] WHERE key = p_keys[i];
        END IF;
    END LOOP;
    INSERT INTO limit_slots (key, reservation_id, expires_at)
        SELECT k, p_rid, p_expires_at FROM unnest(p_slot_keys) AS t(k);
    INSERT INTO limit_reservations
        (id, namespace, call_key, state, expires_at, keep_until, holds, applied)
        VALUES (p_rid, p_ns, NULL, 'pending', p_expires_at, p_keep_until, p_holds, '');
END;
$$;
"""
# A release or settlement decided from the reservation as read (unlocked) a moment before:
# applied only if the reservation is still as read (its state and which actuals landed), in
# one statement, so the caller's counter rows are locked for the function's run only, as for
# a reservation. False: it changed meanwhile (a commit, another settlement, the upkeep), and
# the caller decides again under the row's lock.
_PG_FINISH = """
CREATE OR REPLACE FUNCTION vapi_limits_finish(
    p_rid text, p_old_state text, p_old_applied text, p_state text, p_applied text,
    p_keys text[], p_deltas bigint[]
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    UPDATE limit_reservations SET state = p_state, applied = p_applied
        WHERE id = p_rid AND state = p_old_state AND applied = p_old_applied;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM limit_slots WHERE reservation_id = p_rid;
    -- In key order (the caller sorts them), like a reservation: no lock-order deadlocks.
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        UPDATE limit_counters SET value = greatest(value + p_deltas[i], 0) WHERE key = p_keys[i];
    END LOOP;
    RETURN true;
END;
$$;
"""
_SCHEMA_LOCK_ID = 0x7661_7069  # arbitrary, constant: serialises CREATE TABLE across replicas

R = TypeVar("R")

_unavailable = unavailable_on(
    sa.exc.TimeoutError, sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DBAPIError
)


class LimitsSchemaError(RuntimeError):
    """The limits tables exist but do not match this version."""


KEY_CHARS = 512
"""The key columns' width (`String(512)`)."""
_KEPT = KEY_CHARS - 65


def _fit(key: str) -> str:
    """A counter or slot key as stored: itself, or past the columns' width its first part (the
    namespace and rule, so the upkeep's prefix ranges still find it) and a digest of the whole.
    Limit keys hold the caller's identity key, and a long issuer and subject made them too long
    for PostgreSQL, which refused the reservation ("limits unavailable" for that caller)."""
    if len(key) <= KEY_CHARS:
        return key
    return key[:_KEPT] + "#" + hashlib.sha256(key.encode()).hexdigest()


def _changes(deltas: dict[str, int]) -> list[tuple[str, int]]:
    """The counter deltas that change something, in key order (the order rows are locked in)."""
    return [(k, d) for k, d in sorted(deltas.items()) if d]


class SqlStore:
    def __init__(self, settings: LimitsSettings, *, database: Database | None = None) -> None:
        # A shared Database (the ledger's, same URL) means one engine and one SQLite writer
        # thread for both, so their writes queue in-process instead of in SQLite's busy handler.
        shared = database is not None and not settings.backend.startswith("ledger:")
        if shared and database is not None and database.url != async_url(settings.backend):
            raise ValueError("the shared database's URL differs from limits.backend")
        self._owns_db = database is None
        self._db = database or Database(settings.backend, timeout=settings.timeout_seconds)
        if self._db.dialect != "postgresql":
            raise ValueError("the SQL limits store is for PostgreSQL; SQLite has the embedded one")
        self.name = f"{self._db.dialect} ({redact(self._db.url)})"
        # One deadline over connect and statements, started once a connection is ours (see
        # `_unavailable`): at most as many operations at once as the engine's pool holds.
        self.deadline: float | None = settings.timeout_seconds
        # Beyond the engine's pool (`Database.pool_connections`) operations queue on `slots`,
        # outside the store deadline.
        self.slots = asyncio.Semaphore(self._db.pool_connections)
        self.queue_timeout = max(30.0, settings.timeout_seconds)
        self.deadline_misses = 0
        self._ns = settings.namespace
        self._ready = False
        self._schema_lock = asyncio.Lock()

    async def _ensure_schema(self) -> None:
        if not self._ready:
            async with self._schema_lock:  # a burst at start-up creates the tables once
                if not self._ready:
                    self._db.check_reachable()
                    await self._db.run_write(self._create_schema)
                    self._ready = True

    async def _run(self, fn: Callable[[Connection], R]) -> R:
        await self._ensure_schema()
        return await self._db.run_write(fn)

    async def _run_one(self, fn: Callable[[Connection], R]) -> R:
        """`fn`'s statements each commit on their own (see `Database.run_statement`)."""
        await self._ensure_schema()
        return await self._db.run_statement(fn)

    def _create_schema(self, conn: Connection) -> None:
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK_ID)))
        metadata.create_all(conn)
        # create_all never alters an existing table: say so plainly if one is from an older
        # version rather than failing later on a missing column.
        inspector = sa.inspect(conn)
        for table in metadata.sorted_tables:
            have = {c["name"] for c in inspector.get_columns(table.name)}
            missing = sorted(set(table.columns.keys()) - have)
            if missing:
                raise LimitsSchemaError(
                    f"table {table.name} lacks {', '.join(missing)}: it is from an older "
                    "vapi-proxy. The limits tables hold only live counters; drop limit_counters, "
                    "limit_slots and limit_reservations (or use a new database) and restart."
                )
        conn.exec_driver_sql(_PG_RESERVE)
        conn.exec_driver_sql(_PG_FINISH)

    @_unavailable
    async def reserve(
        self, rid: str, plan: Plan, *, now: float, expires_at: float, keep_until: float
    ) -> list[Shortfall]:
        slot_keys = [_fit(s.hold.key) for s in plan.slots]
        # Every counter, plus one anchor row per slot bucket so slot counting is serialised too.
        anchors = {_fit(c.hold.key): now + c.ttl for c in plan.counters}
        for key in slot_keys:
            anchors.setdefault(key, keep_until)
        keys = sorted(anchors)
        holds = json.dumps([[h.what, _fit(h.key), h.amount] for h in plan.holds])
        return await self._run_one(
            lambda conn: self._pg_reserve(
                conn, plan, rid, keys, anchors, now, expires_at, keep_until, holds
            )
        )

    def _pg_reserve(
        self,
        conn: Connection,
        plan: Plan,
        rid: str,
        keys: list[str],
        anchors: dict[str, float],
        now: float,
        expires_at: float,
        keep_until: float,
        holds: str,
    ) -> list[Shortfall]:
        rows = conn.execute(
            _PG_CALL,
            {
                "ak": keys,
                "ax": [anchors[k] for k in keys],
                "k": [_fit(c.hold.key) for c in plan.counters],
                "a": [c.hold.amount for c in plan.counters],
                "l": [c.limit for c in plan.counters],
                "f": [c.fit for c in plan.counters],
                "wk": [_fit(k) for c in plan.counters for k in c.window],
                "wn": [len(c.window) for c in plan.counters],
                "sk": [_fit(s.hold.key) for s in plan.slots],
                "sl": [s.limit for s in plan.slots],
                "rid": rid,
                "ns": self._ns,
                "now": now,
                "exp": expires_at,
                "keep": keep_until,
                "holds": holds,
            },
        )
        return [Shortfall(int(i), int(c), e) for i, c, e in rows]

    @_unavailable
    async def commit(self, rid: str, call_id: str, *, now: float) -> None:
        def tx(conn: Connection) -> None:
            conn.execute(_COMMIT_STMT, {"rid": rid, "ck": f"{self._ns}:{call_id}"})

        await self._run_one(tx)

    @staticmethod
    def _finish(
        conn: Connection, rid: str, deltas: dict[str, int], state: str, applied: str
    ) -> None:
        conn.execute(_DELETE_SLOTS, {"rid": rid})
        conn.execute(_SET_STATE, {"rid": rid, "st": state, "ap": applied})
        # Counters last, in one batch and in key order (like reserve: no lock-order deadlocks),
        # so the rows every reservation of this identity queues for are held only briefly.
        changes = [{"k": k, "d": d} for k, d in _changes(deltas)]
        if changes:
            conn.execute(_ADJUST, changes)

    @staticmethod
    def _release_deltas(row: sa.Row[Any]) -> tuple[dict[str, int], str, str] | None:
        if row.state not in LIVE:
            return None
        deltas: dict[str, int] = {}
        for what, key, amount in json.loads(row.holds):
            if what != "concurrency":
                deltas[key] = deltas.get(key, 0) - int(amount)
        return deltas, "released", row.applied

    @staticmethod
    def _settle_deltas(
        row: sa.Row[Any], actual_ms: int | None, actual_micro_usd: int | None
    ) -> tuple[dict[str, int], str, str] | None:
        if row.state not in SETTLEABLE:
            return None
        deltas, applied, done = true_up(
            json.loads(row.holds), row.applied, actual_ms, actual_micro_usd
        )
        return deltas, "settled" if done else "ended", applied

    async def _finish_row(
        self,
        read: sa.Select[Any],
        lock: sa.Select[Any],
        value: str,
        decide: Callable[[sa.Row[Any]], tuple[dict[str, int], str, str] | None],
    ) -> None:
        """End a reservation: read it, decide its counter deltas and new state, and apply them
        in one statement if it is still as read (`vapi_limits_finish`): two round trips, no lock
        held across either. If it changed in between, decide again under its row lock."""

        def optimistic(conn: Connection) -> bool:
            row = conn.execute(read, {"v": value}).first()
            decided = None if row is None else decide(row)
            if row is None or decided is None:
                return True  # nothing to end
            deltas, state, applied = decided
            changes = _changes(deltas)
            return bool(
                conn.execute(
                    _PG_FINISH_CALL,
                    {
                        "rid": row.id,
                        "old_state": row.state,
                        "old_applied": row.applied,
                        "st": state,
                        "ap": applied,
                        "k": [k for k, _ in changes],
                        "d": [d for _, d in changes],
                    },
                ).scalar()
            )

        def locked(conn: Connection) -> None:
            row = conn.execute(lock, {"v": value}).first()
            decided = None if row is None else decide(row)
            if row is not None and decided is not None:
                deltas, state, applied = decided
                self._finish(conn, row.id, deltas, state, applied)

        if not await self._run_one(optimistic):
            await self._run(locked)

    @_unavailable
    async def release(self, rid: str, *, now: float) -> None:
        await self._finish_row(_READ_BY_ID, _LOCK_BY_ID, rid, self._release_deltas)

    @_unavailable
    async def settle(
        self, call_id: str, *, actual_ms: int | None, actual_micro_usd: int | None, now: float
    ) -> None:
        await self._finish_row(
            _READ_BY_CALL,
            _LOCK_BY_CALL,
            f"{self._ns}:{call_id}",
            lambda row: self._settle_deltas(row, actual_ms, actual_micro_usd),
        )

    @_unavailable
    async def expire(self, now: float) -> list[str | None]:
        prefix = f"{self._ns}:"

        def tx(conn: Connection) -> list[str | None]:
            found = list(
                conn.execute(
                    sa.select(reservations.c.id, reservations.c.call_key)
                    .where(
                        reservations.c.namespace == self._ns,
                        reservations.c.state.in_(LIVE),
                        reservations.c.expires_at <= now,
                    )
                    .limit(1000)
                    .with_for_update(skip_locked=True)
                )
            )
            ids = [rid for rid, _ in found]
            if ids:
                conn.execute(slots.delete().where(slots.c.reservation_id.in_(ids)))
                conn.execute(
                    reservations.update().where(reservations.c.id.in_(ids)).values(state="expired")
                )
            conn.execute(
                reservations.delete().where(
                    reservations.c.namespace == self._ns, reservations.c.keep_until <= now
                )
            )
            # Keys start with the namespace; a range is index-friendly where LIKE may not be.
            lo, hi = f"{self._ns}:", f"{self._ns};"
            conn.execute(
                counters.delete().where(
                    counters.c.key >= lo, counters.c.key < hi, counters.c.expires_at <= now
                )
            )
            conn.execute(
                slots.delete().where(slots.c.key >= lo, slots.c.key < hi, slots.c.expires_at <= now)
            )
            return [None if key is None else key[len(prefix) :] for _, key in found]

        return await self._run(tx)

    @_unavailable
    async def peek(
        self, keys: Sequence[str], slot_keys: Sequence[str], *, now: float
    ) -> tuple[dict[str, int], dict[str, tuple[int, float | None]]]:
        await self._ensure_schema()
        asked = {_fit(k): k for k in keys}
        asked_slots = {_fit(k): k for k in slot_keys}
        async with self._db.read() as conn:
            values: dict[str, int] = {}
            if asked:
                rows = await conn.execute(
                    sa.select(counters.c.key, counters.c.value).where(counters.c.key.in_(asked))
                )
                values = {asked[k]: int(v) for k, v in rows}
            live: dict[str, tuple[int, float | None]] = {}
            if asked_slots:
                found = await conn.execute(
                    sa.select(slots.c.key, sa.func.count(), sa.func.min(slots.c.expires_at))
                    .where(slots.c.key.in_(asked_slots), slots.c.expires_at > now)
                    .group_by(slots.c.key)
                )
                live = {asked_slots[k]: (int(n), e) for k, n, e in found}
        return values, live

    @_unavailable
    async def ping(self) -> None:
        self._db.check_reachable()

        def tx(conn: Connection) -> None:
            conn.execute(sa.text("SELECT 1"))

        await self._db.run_write(tx)

    async def aclose(self) -> None:
        if self._owns_db:
            await self._db.aclose()
