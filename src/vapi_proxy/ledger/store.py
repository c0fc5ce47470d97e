"""The `Ledger`: record calls, apply Vapi's webhook events to them, sum usage, idempotency keys,
and the outbox of events to forward to the app.

Every write is one transaction. Events are deduplicated by a unique key, and a call's state only
moves forward (queued → ringing → in-progress → forwarding → ended), so late or repeated
deliveries cannot undo an end-of-call-report.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from vapi_proxy.auth.identity import Identity
from vapi_proxy.ledger.batch import CallRows, GroupCommit, PgCallRows, sqlite_time
from vapi_proxy.ledger.engine import Database, RawJSON, redact
from vapi_proxy.ledger.migrate import current_revision, head_revision, upgrade_async
from vapi_proxy.ledger.records import (
    CALL_FIELDS,
    FINAL_TYPES,
    STATUS_RANK,
    CallRecord,
    EventOutcome,
    IdempotencyResult,
    LedgerEvent,
    LedgerHealth,
    OutboxEntry,
    OutboxItem,
    UsageRow,
    payload_json,
    record_from_row,
    utc_now,
)
from vapi_proxy.ledger.schema import call_events, calls, idempotency_keys, webhook_outbox

PURGE_BATCH = 2000
"""Rows one purge transaction deletes at most. A backlog (the upkeep was off for days, or a
week of delivered forwards comes due at once) is deleted in short transactions, so the request
path's writes wait for one of them at a time (SQLite has one writer), never for all of it."""


class LedgerSchemaError(RuntimeError):
    """The database is not at the revision this code expects; run `vapi-proxy db upgrade`."""


class Ledger:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._sqlite = db.dialect == "sqlite"
        self._rows = CallRows()
        self._pg_rows = None if self._sqlite else PgCallRows(db)
        self._pg_commit = None if self._pg_rows is None else GroupCommit(self._pg_rows.write)

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 5.0) -> Ledger:
        return cls(Database(url, timeout=timeout))

    @property
    def database(self) -> Database:
        return self._db

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql if self._db.dialect == "postgresql" else sqlite).insert(table)

    async def start(
        self, auto_migrate: bool = False, *, jwt_issuers: Sequence[str | None] | None = None
    ) -> None:
        """Migrate (when asked) or check the schema is current; refuses to run on a stale one.
        `jwt_issuers`: the configured jwt methods' issuers (see `upgrade_async`)."""
        if auto_migrate:
            await upgrade_async(self._db, jwt_issuers=jwt_issuers)
            return
        self._db.check_reachable()
        current = await current_revision(self._db)
        if current != head_revision():
            raise LedgerSchemaError(
                f"ledger database is at revision {current or 'none'}, this version needs "
                f"{head_revision()}: run `vapi-proxy db upgrade` (or enable auto-migrate)"
            )

    async def aclose(self) -> None:
        if self._pg_rows is not None:
            await self._pg_rows.aclose()
        await self._db.aclose()

    async def health(self) -> LedgerHealth:
        name = f"{self._db.dialect} ({redact(self._db.url)})"
        try:
            self._db.check_reachable()
            async with self._db.read() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except (sa.exc.SQLAlchemyError, OSError, TimeoutError) as exc:
            return LedgerHealth(False, name, f"{type(exc).__name__}: {exc}"[:300])
        return LedgerHealth(True, name)

    # --- calls -----------------------------------------------------------------------------

    async def record_call(
        self,
        *,
        call_id: str,
        identity: Identity,
        profile: str,
        kind: str = "call",
        request_id: str | None = None,
        status: str = "queued",
        max_duration_seconds: float | None = None,
        reservation_id: str | None = None,
        created_at: datetime | None = None,
        session_id: str | None = None,
        control_url: str | None = None,
    ) -> bool:
        """Insert the call; False if it was already recorded (a retry), which changes nothing.
        `control_url` (Vapi's `monitor.controlUrl`) stays server-side: the console ends calls
        with it."""
        now = created_at or utc_now()
        stamp: Any = sqlite_time(now) if self._sqlite else now
        row = (
            call_id,
            kind,
            identity.key,
            identity.hashed,
            identity.method,
            identity.tenant,
            profile,
            request_id,
            stamp,
            status,
            max_duration_seconds,
            reservation_id,
            stamp,
            session_id,
            control_url if control_url and len(control_url) <= 2048 else None,
        )
        if self._pg_commit is not None:
            return await self._pg_commit.add(row)
        return await self._db.add(self._rows, row)

    async def get_call(self, call_id: str) -> CallRecord | None:
        async with self._db.read() as conn:
            row = (await conn.execute(sa.select(calls).where(calls.c.id == call_id))).first()
        return None if row is None else record_from_row(row)

    async def session_owner(self, session_id: str) -> CallRecord | None:
        """The first chat recorded in a Vapi chat session: who started it, with which profile."""
        q = (
            sa.select(calls)
            .where(calls.c.session_id == session_id)
            .order_by(calls.c.created_at, calls.c.id)
            .limit(1)
        )
        async with self._db.read() as conn:
            row = (await conn.execute(q)).first()
        return None if row is None else record_from_row(row)

    async def list_calls(
        self,
        identity_key: str,
        *,
        limit: int = 50,
        since: datetime | None = None,
        kinds: Collection[str] | None = None,
    ) -> list[CallRecord]:
        """Newest first: a user's own calls (the ownership check for reads)."""
        q = sa.select(calls).where(calls.c.identity_key == identity_key)
        if kinds is not None:
            q = q.where(calls.c.kind.in_(list(kinds)))
        if since is not None:
            q = q.where(calls.c.created_at >= since)
        q = q.order_by(calls.c.created_at.desc(), calls.c.id).limit(max(1, min(limit, 1000)))
        async with self._db.read() as conn:
            return [record_from_row(r) for r in await conn.execute(q)]

    async def adopt_call(
        self,
        *,
        call_id: str,
        identity_hash: str,
        profile: str,
        kind: str,
        request_id: str | None = None,
        created_at: datetime | None = None,
        max_duration_seconds: float | None = None,
    ) -> CallRecord | None:
        """Record a call this proxy created but never recorded (its ledger write failed, or
        the process died first), known from the attribution in its webhooks, and replay the
        events already stored for it. The metadata holds only the identity's hash: when the
        ledger knows another call of that identity, the call is given back to it (same key,
        tenant, method); otherwise it is keyed `adopted:<hash>`. None if the call was
        recorded meanwhile."""
        now = utc_now()
        async with self._db.read() as conn:
            # Adoption is rare, so a scan of this column is acceptable here.
            known = (
                await conn.execute(
                    sa.select(calls.c.identity_key, calls.c.auth_method, calls.c.tenant)
                    .where(
                        calls.c.identity_hash == identity_hash[:32],
                        calls.c.auth_method != "adopted",
                    )
                    .limit(1)
                )
            ).first()
        identity_key, auth_method, tenant = (
            (known.identity_key, known.auth_method, known.tenant)
            if known is not None
            else (f"adopted:{identity_hash}", "adopted", None)
        )
        stmt = (
            self._insert(calls)
            .values(
                id=call_id,
                kind=kind,
                identity_key=identity_key,
                identity_hash=identity_hash[:32],
                auth_method=auth_method,
                tenant=tenant,
                profile=profile,
                request_id=request_id,
                created_at=created_at or now,
                status="queued",
                max_duration_seconds=max_duration_seconds,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )

        def tx(conn: Connection) -> CallRecord | None:
            if conn.execute(stmt).rowcount != 1:
                return None
            events = conn.execute(
                sa.select(call_events.c.dedupe_key, call_events.c.payload)
                .where(call_events.c.call_id == call_id)
                .order_by(call_events.c.id)
            )
            row = (conn.execute(sa.select(calls).where(calls.c.id == call_id))).one()
            call = record_from_row(row)
            for dedupe_key, payload in list(events):
                if isinstance(payload, Mapping):
                    replay = LedgerEvent.from_vapi(payload, dedupe_key=dedupe_key)
                    call, _ = self._settle(conn, call, replay, now)
            conn.execute(
                call_events.update()
                .where(call_events.c.call_id == call_id, call_events.c.known.is_(False))
                .values(known=True)
            )
            return call

        return await self._db.run_write(tx)

    async def apply_events(
        self,
        items: Sequence[tuple[LedgerEvent, Sequence[OutboxItem]]],
        *,
        received_at: datetime | None = None,
    ) -> list[EventOutcome]:
        """Store each event (once per dedupe key) and move its call forward, all in one
        transaction and a handful of statements (one read of the calls, one multi-row insert of
        the events, one batched update per set of changed columns, one outbox insert), with the
        outcomes of applying them one by one in order. An event's outbox rows are written only
        for its first delivery."""
        if not items:
            return []
        received = received_at or utc_now()
        if self._sqlite:
            # One hop to the writer thread; prepared stdlib statements, no SQLAlchemy.
            return await self._db.run_raw(lambda conn: _sqlite_apply(conn, items, received))
        return await self._db.run_write(lambda conn: self._pg_apply(conn, items, received))

    def _pg_apply(
        self,
        conn: Connection,
        items: Sequence[tuple[LedgerEvent, Sequence[OutboxItem]]],
        received: datetime,
    ) -> list[EventOutcome]:
        """`apply_events` on PostgreSQL (SQLAlchemy, one transaction)."""
        ids = sorted({e.call_id for e, _ in items if e.call_id is not None})
        current: dict[str, CallRecord] = {}
        if ids:
            rows = conn.execute(sa.select(calls).where(calls.c.id.in_(ids)).with_for_update())
            current = {row.id: record_from_row(row) for row in rows}
        values = [
            {
                "call_id": e.call_id,
                "type": e.type[:64],
                "status": e.status,
                "received_at": received,
                "dedupe_key": e.dedupe_key,
                "known": e.call_id in current,
                "payload": RawJSON(payload_json(e.payload).decode()),
            }
            for e, _ in items
        ]
        # One statement shape whatever the batch size, so SQLAlchemy compiles it once
        # (its "insertmanyvalues" still sends one multi-row INSERT).
        ins = (
            self._insert(call_events)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(call_events.c.dedupe_key)
        )
        fresh = set(conn.execute(ins, values).scalars())
        outcomes, changed, outbox = _outcomes(items, current, fresh, received)
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for call_id, changes in changed.items():
            columns = tuple(sorted(changes))
            groups.setdefault(columns, []).append(
                {"b_id": call_id, **{f"b_{k}": v for k, v in changes.items()}}
            )
        for columns, params in groups.items():
            stmt = (
                calls.update()
                .where(calls.c.id == sa.bindparam("b_id"))
                .values({k: sa.bindparam(f"b_{k}") for k in columns})
            )
            conn.execute(stmt, params)
        if outbox:
            conn.execute(webhook_outbox.insert(), _outbox_rows(outbox, received))
        return outcomes

    @staticmethod
    def _settle(
        conn: Connection, call: CallRecord, event: LedgerEvent, now: datetime
    ) -> tuple[CallRecord, bool]:
        changes = _changes(call, event, now)
        if not changes:
            return call, False
        conn.execute(calls.update().where(calls.c.id == call.id).values(**changes))
        merged = {name: getattr(call, name) for name in CALL_FIELDS} | changes
        return CallRecord(**merged), changes.get("status") == "ended"

    async def usage(
        self,
        *,
        identity_key: str | None = None,
        tenant: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[UsageRow]:
        """Calls, ended calls, minutes and cost per identity, tenant and kind."""
        q = sa.select(
            calls.c.identity_key,
            calls.c.tenant,
            calls.c.kind,
            sa.func.count(),
            sa.func.count(sa.case((calls.c.status == "ended", 1))),
            sa.func.coalesce(sa.func.sum(calls.c.duration_seconds), 0.0),
            sa.func.coalesce(sa.func.sum(calls.c.cost_usd), 0.0),
        ).group_by(calls.c.identity_key, calls.c.tenant, calls.c.kind)
        if identity_key is not None:
            q = q.where(calls.c.identity_key == identity_key)
        if tenant is not None:
            q = q.where(calls.c.tenant == tenant)
        if since is not None:
            q = q.where(calls.c.created_at >= since)
        if until is not None:
            q = q.where(calls.c.created_at < until)
        q = q.order_by(calls.c.identity_key, calls.c.kind)
        async with self._db.read() as conn:
            rows = await conn.execute(q)
            return [
                UsageRow(ik, t, k, int(n), int(e), round(float(secs) / 60, 4), round(float(c), 6))
                for ik, t, k, n, e, secs, c in rows
            ]

    # --- idempotency -----------------------------------------------------------------------

    async def idempotency_claim(
        self,
        key: str,
        identity_key: str,
        *,
        ttl_seconds: float = 86400,
        request_hash: str | None = None,
        now: datetime | None = None,
    ) -> IdempotencyResult:
        """First writer wins atomically; later ones see its state (or an expired key is reused)."""
        now = now or utc_now()
        expires = now + timedelta(seconds=ttl_seconds)
        ins = (
            self._insert(idempotency_keys)
            .values(
                key=key,
                identity_key=identity_key,
                state="in_progress",
                request_hash=request_hash,
                created_at=now,
                expires_at=expires,
            )
            .on_conflict_do_nothing(index_elements=["key", "identity_key"])
        )
        where = (idempotency_keys.c.key == key) & (idempotency_keys.c.identity_key == identity_key)

        def tx(conn: Connection) -> IdempotencyResult | Any:
            if conn.execute(ins).rowcount == 1:
                return IdempotencyResult("claimed")
            taken = conn.execute(
                idempotency_keys.update()
                .where(where, idempotency_keys.c.expires_at <= now)
                .values(
                    state="in_progress",
                    request_hash=request_hash,
                    response_status=None,
                    response_body=None,
                    created_at=now,
                    expires_at=expires,
                )
            )
            if taken.rowcount == 1:
                return IdempotencyResult("claimed")
            return conn.execute(sa.select(idempotency_keys).where(where)).one()

        row = await self._db.run_write(tx)
        if isinstance(row, IdempotencyResult):
            return row
        if request_hash is not None and row.request_hash not in (None, request_hash):
            return IdempotencyResult("mismatch")
        if row.state == "completed":
            return IdempotencyResult("completed", row.response_status, row.response_body)
        return IdempotencyResult("in_progress")

    async def idempotency_complete(
        self, key: str, identity_key: str, *, status: int, body: bytes
    ) -> None:
        def tx(conn: Connection) -> None:
            conn.execute(
                idempotency_keys.update()
                .where(
                    idempotency_keys.c.key == key, idempotency_keys.c.identity_key == identity_key
                )
                .values(state="completed", response_status=status, response_body=body)
            )

        await self._db.run_write(tx)

    async def idempotency_abandon(self, key: str, identity_key: str) -> None:
        """The first request failed before reaching Vapi: let a retry try again."""

        def tx(conn: Connection) -> None:
            conn.execute(
                idempotency_keys.delete().where(
                    idempotency_keys.c.key == key,
                    idempotency_keys.c.identity_key == identity_key,
                    idempotency_keys.c.state == "in_progress",
                )
            )

        await self._db.run_write(tx)

    async def idempotency_get(
        self, key: str, identity_key: str, *, now: datetime | None = None
    ) -> IdempotencyResult | None:
        now = now or utc_now()
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(idempotency_keys).where(
                        idempotency_keys.c.key == key,
                        idempotency_keys.c.identity_key == identity_key,
                        idempotency_keys.c.expires_at > now,
                    )
                )
            ).first()
        if row is None:
            return None
        if row.state == "completed":
            return IdempotencyResult("completed", row.response_status, row.response_body)
        return IdempotencyResult("in_progress")

    async def idempotency_purge(self, *, now: datetime | None = None) -> int:
        """Forget expired idempotency keys; how many."""
        due = idempotency_keys.c.expires_at <= (now or utc_now())
        return await self._purge([idempotency_keys.c.key, idempotency_keys.c.identity_key], due)

    async def _purge(self, key: Sequence[sa.Column[Any]], where: sa.ColumnElement[bool]) -> int:
        """Delete the rows of `key`'s table that match `where`, at most `PURGE_BATCH` a
        transaction, until none is left; how many."""
        chosen = sa.select(*key).where(where).limit(PURGE_BATCH)
        match = sa.tuple_(*key).in_(chosen) if len(key) > 1 else key[0].in_(chosen)
        stmt = sa.delete(key[0].table).where(match)
        total = 0
        while True:
            deleted = await self._db.run_write(lambda conn: int(conn.execute(stmt).rowcount))
            total += deleted
            if deleted < PURGE_BATCH:  # the last batch (another replica may be purging too)
                return total

    # --- webhook outbox --------------------------------------------------------------------

    async def outbox_add(self, items: Sequence[OutboxItem], *, now: datetime | None = None) -> None:
        if items:
            rows = _outbox_rows(items, now or utc_now())
            await self._db.run_write(lambda conn: conn.execute(webhook_outbox.insert(), rows))

    async def outbox_claim(
        self, *, limit: int, lease_seconds: float, now: datetime | None = None
    ) -> list[OutboxEntry]:
        """Take up to `limit` due deliveries, oldest first, hiding them from other workers for
        `lease_seconds` (a crashed worker's rows come back after it)."""
        now = now or utc_now()
        q = (
            sa.select(webhook_outbox)
            .where(webhook_outbox.c.state == "pending", webhook_outbox.c.next_attempt_at <= now)
            .order_by(webhook_outbox.c.next_attempt_at, webhook_outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )

        def tx(conn: Connection) -> list[Any]:
            rows = list(conn.execute(q))
            if not rows:
                return []
            conn.execute(
                webhook_outbox.update()
                .where(webhook_outbox.c.id.in_([r.id for r in rows]))
                .values(
                    attempts=webhook_outbox.c.attempts + 1,
                    next_attempt_at=now + timedelta(seconds=lease_seconds),
                )
            )
            return rows

        rows = await self._db.run_write(tx)
        return [
            OutboxEntry(r.id, r.event_id, r.target, r.type, r.body, r.attempts + 1, r.created_at)
            for r in rows
        ]

    async def outbox_delivered(self, entry_id: int, *, now: datetime | None = None) -> None:
        stmt = (
            webhook_outbox.update()
            .where(webhook_outbox.c.id == entry_id)
            .values(state="delivered", delivered_at=now or utc_now(), last_error=None)
        )
        await self._db.run_write(lambda conn: conn.execute(stmt))

    async def outbox_failed(self, entry_id: int, *, error: str, retry_at: datetime | None) -> None:
        """Record a failed attempt: retry at `retry_at`, or park the row (kept, not retried)
        when it is None."""
        values: dict[str, Any] = {"last_error": error[:512]}
        if retry_at is None:
            values["state"] = "parked"
        else:
            values["next_attempt_at"] = retry_at
        stmt = webhook_outbox.update().where(webhook_outbox.c.id == entry_id).values(**values)
        await self._db.run_write(lambda conn: conn.execute(stmt))

    async def outbox_counts(self) -> dict[str, int]:
        """Rows per state (`pending`, `delivered`, `parked`)."""
        q = sa.select(webhook_outbox.c.state, sa.func.count()).group_by(webhook_outbox.c.state)
        async with self._db.read() as conn:
            return {state: int(n) for state, n in await conn.execute(q)}

    async def outbox_purge(self, *, before: datetime) -> int:
        """Forget delivered rows older than `before`; how many."""
        due = sa.and_(webhook_outbox.c.state == "delivered", webhook_outbox.c.delivered_at < before)
        return await self._purge([webhook_outbox.c.id], due)


def _outcomes(
    items: Sequence[tuple[LedgerEvent, Sequence[OutboxItem]]],
    current: dict[str, CallRecord],
    fresh: set[str],
    received: datetime,
) -> tuple[list[EventOutcome], dict[str, dict[str, Any]], list[OutboxItem]]:
    """Apply the events one by one, in order: their outcomes, the columns each call changes
    (`current` is updated), and the outbox rows of first deliveries. `fresh`: the dedupe keys
    the insert stored (emptied)."""
    outcomes: list[EventOutcome] = []
    changed: dict[str, dict[str, Any]] = {}
    outbox: list[OutboxItem] = []
    for event, rows_out in items:
        call = current.get(event.call_id) if event.call_id is not None else None
        if event.dedupe_key not in fresh:
            outcomes.append(EventOutcome(call is not None, True, call))
            continue
        fresh.discard(event.dedupe_key)  # a second copy in this batch is a duplicate
        outbox.extend(rows_out)
        if call is None:
            outcomes.append(EventOutcome(False, False, None))
            continue
        changes = _changes(call, event, received)
        if changes:
            call = current[call.id] = dataclasses.replace(call, **changes)
            changed.setdefault(call.id, {}).update(changes)
        outcomes.append(EventOutcome(True, False, call, changes.get("status") == "ended"))
    return outcomes, changed, outbox


# SQLite's `apply_events`: stdlib statements on the writer's connection, in the formats
# SQLAlchemy's column types store (timestamps as `sqlite_time` text, JSON as text).
_SQL_CALLS = f"SELECT {', '.join(CALL_FIELDS)} FROM calls WHERE id IN "  # noqa: S608 - constants
_SQL_EVENT = (
    "INSERT INTO call_events (call_id, type, status, received_at, dedupe_key, known, payload) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING"
)
_SQL_OUTBOX = (
    "INSERT INTO webhook_outbox (event_id, target, type, body, created_at, attempts, "
    "next_attempt_at, state) VALUES (?, ?, ?, ?, ?, 0, ?, 'pending')"
)
_TIME_FIELDS = frozenset({"created_at", "started_at", "ended_at", "updated_at"})
_TIME_INDEXES = [i for i, name in enumerate(CALL_FIELDS) if name in _TIME_FIELDS]
_ANALYSIS = CALL_FIELDS.index("analysis")
_ID_CHUNK = 500  # well under SQLite's bound-parameter limit


def _sqlite_record(row: tuple[Any, ...]) -> CallRecord:
    values = list(row)
    for i in _TIME_INDEXES:
        if values[i] is not None:
            values[i] = datetime.fromisoformat(values[i]).replace(tzinfo=UTC)
    if values[_ANALYSIS] is not None:
        values[_ANALYSIS] = orjson.loads(values[_ANALYSIS])
    return CallRecord(*values)


def _sqlite_value(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _TIME_FIELDS:
        return sqlite_time(value)
    if name == "analysis":
        return orjson.dumps(value, default=str).decode()
    return value


def _sqlite_apply(
    conn: sqlite3.Connection,
    items: Sequence[tuple[LedgerEvent, Sequence[OutboxItem]]],
    received: datetime,
) -> list[EventOutcome]:
    """`apply_events` on SQLite, inside the writer's transaction (`BEGIN IMMEDIATE` holds the
    database, so the read of the calls needs no lock)."""
    ids = list({e.call_id for e, _ in items if e.call_id is not None})
    current: dict[str, CallRecord] = {}
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        sql = _SQL_CALLS + "(" + ",".join("?" * len(chunk)) + ")"
        for row in conn.execute(sql, chunk):
            current[row[0]] = _sqlite_record(row)
    stamp = sqlite_time(received)
    insert = conn.execute
    # Row by row: each insert's rowcount says whether its dedupe key was new.
    fresh = {
        e.dedupe_key
        for e, _ in items
        if insert(
            _SQL_EVENT,
            (
                e.call_id,
                e.type[:64],
                e.status,
                stamp,
                e.dedupe_key,
                e.call_id in current,
                payload_json(e.payload).decode(),
            ),
        ).rowcount
        == 1
    }
    outcomes, changed, outbox = _outcomes(items, current, fresh, received)
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for call_id, changes in changed.items():
        columns = tuple(sorted(changes))
        groups.setdefault(columns, []).append(
            (*(_sqlite_value(k, changes[k]) for k in columns), call_id)
        )
    for columns, params in groups.items():
        sets = ", ".join(f"{k} = ?" for k in columns)
        conn.executemany(f"UPDATE calls SET {sets} WHERE id = ?", params)  # noqa: S608
    if outbox:
        conn.executemany(
            _SQL_OUTBOX,
            [(o.event_id, o.target, o.type[:64], o.body, stamp, stamp) for o in outbox],
        )
    return outcomes


def _changes(call: CallRecord, event: LedgerEvent, now: datetime) -> dict[str, Any]:
    """What `event` changes on `call` (empty: nothing); a call only moves forward."""
    final = event.type in FINAL_TYPES
    changes: dict[str, Any] = {}
    old_rank = STATUS_RANK.get(call.status, -1)
    new_rank = STATUS_RANK.get(event.status or "", -1)
    if new_rank > old_rank:
        changes["status"] = event.status
    if event.started_at and call.started_at is None:
        changes["started_at"] = event.started_at
    # The report is authoritative for how the call ended; a status-update only fills gaps.
    for name in ("ended_at", "ended_reason", "cost_usd", "duration_seconds", "summary"):
        value = getattr(event, name)
        if value is not None and (final or getattr(call, name) is None):
            changes[name] = value
    if event.analysis is not None and final:
        changes["analysis"] = event.analysis
    if event.control_url is not None and call.control_url is None:
        changes["control_url"] = event.control_url  # a call the proxy did not create itself
    started = changes.get("started_at", call.started_at)
    ended = changes.get("ended_at", call.ended_at)
    if "duration_seconds" not in changes and call.duration_seconds is None and started and ended:
        changes["duration_seconds"] = max(0.0, (ended - started).total_seconds())
    if changes:
        changes["updated_at"] = now
    return changes


def _outbox_rows(items: Sequence[OutboxItem], now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "event_id": item.event_id,
            "target": item.target,
            "type": item.type[:64],
            "body": item.body,
            "created_at": now,
            "attempts": 0,
            "next_attempt_at": now,
            "state": "pending",
        }
        for item in items
    ]
