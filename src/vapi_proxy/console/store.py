"""The console's state in the ledger database: admin sessions, the audit trail and identity
blocks. Everything here is shared by every worker and replica; nothing lives only in a process.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from vapi_proxy.ledger.engine import Database
from vapi_proxy.ledger.records import utc_now
from vapi_proxy.ledger.schema import admin_audit, admin_sessions, console_versions, identity_blocks

BLOCKS = "blocks"
"""The `console_versions` row bumped on every block change: replicas poll it."""

PENDING = "pending"
"""The outcome of an action reserved and not (yet) done: see `ConsoleStore.reserve_action`."""
ACTION_WINDOW = timedelta(minutes=1)
ACTION_LOCK_CLASS = 0x7661_7061
"""PostgreSQL: the first key of the per-actor advisory lock that serialises reservations (the
two-key lock space, apart from the one-key locks of migrations and the limits store)."""
SIGN_IN_LOCK_CLASS = 0x7661_7073
"""PostgreSQL: the first key of the per-address advisory lock that serialises sign-in attempts
(apart from the per-actor action locks, whatever an actor and an address hash to)."""
SIGN_IN = "sign-in"
UNKNOWN_ACTOR = "-"
"""Whom a sign-in attempt is audited under when no valid credential came with it: the
per-address sign-in limit counts these rows (see `ConsoleStore.reserve_sign_in`)."""
REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class AdminSession:
    actor: str
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Block:
    identity_key: str
    reason: str
    created_at: datetime
    expires_at: datetime | None
    created_by: str

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now

    def view(self) -> dict[str, Any]:
        return {
            "identity": self.identity_key,
            "reason": self.reason,
            "createdAt": iso(self.created_at),
            "expiresAt": iso(self.expires_at),
            "createdBy": self.created_by,
        }


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _lock_key(name: str) -> int:
    """An advisory lock key: a signed 32-bit hash of `name` (an actor's name; for a client
    address, `sign-in:<address>`)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big", signed=True)


def _audit_row(
    *,
    at: datetime,
    actor: str,
    action: str,
    outcome: str,
    target: str | None = None,
    client: str | None = None,
    request_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An `admin_audit` row's values, each cut to its column."""
    return {
        "at": at,
        "actor": actor[:128],
        "action": action[:64],
        "target": None if target is None else target[:512],
        "outcome": outcome[:16],
        "client": None if client is None else client[:64],
        "request_id": request_id,
        "detail": detail,
    }


@dataclass(frozen=True, slots=True)
class SignInSlot:
    """A sign-in attempt let through by `ConsoleStore.reserve_sign_in`: `outcome` is what the
    key check inside the reservation found (`ok`: nothing written; `refused`: the refused row
    `row_id` was written) or `pending` (the credential must be verified outside the lock: row
    `row_id` holds the slot until `finish_action` or `drop_sign_in`)."""

    outcome: str
    row_id: int | None = None


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ConsoleStore:
    """Sessions, audit and blocks over the ledger's `Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def database(self) -> Database:
        return self._db

    # --- sessions --------------------------------------------------------------------------

    async def open_session(
        self, actor: str, *, ttl_seconds: int, client: str | None, now: datetime | None = None
    ) -> tuple[str, AdminSession]:
        """A new session: the cookie token (only its hash is stored) and its CSRF token."""
        now = now or utc_now()
        token = secrets.token_urlsafe(32)
        session = AdminSession(
            actor=actor,
            csrf_token=secrets.token_urlsafe(24),
            expires_at=now + timedelta(seconds=ttl_seconds),
        )
        async with self._db.write() as conn:
            await conn.execute(admin_sessions.delete().where(admin_sessions.c.expires_at <= now))
            await conn.execute(
                admin_sessions.insert().values(
                    token_hash=_token_hash(token),
                    actor=actor,
                    csrf_token=session.csrf_token,
                    client=(client or "")[:64] or None,
                    created_at=now,
                    expires_at=session.expires_at,
                )
            )
        return token, session

    async def session(self, token: str, *, now: datetime | None = None) -> AdminSession | None:
        now = now or utc_now()
        query = sa.select(
            admin_sessions.c.actor, admin_sessions.c.csrf_token, admin_sessions.c.expires_at
        ).where(admin_sessions.c.token_hash == _token_hash(token))
        async with self._db.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None or row.expires_at <= now:
            return None
        return AdminSession(row.actor, row.csrf_token, row.expires_at)

    async def close_session(self, token: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                admin_sessions.delete().where(admin_sessions.c.token_hash == _token_hash(token))
            )

    # --- audit -----------------------------------------------------------------------------

    async def audit(
        self,
        *,
        actor: str,
        action: str,
        outcome: str = "ok",
        target: str | None = None,
        client: str | None = None,
        request_id: str | None = None,
        detail: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> None:
        row = _audit_row(
            at=now or utc_now(),
            actor=actor,
            action=action,
            outcome=outcome,
            target=target,
            client=client,
            request_id=request_id,
            detail=detail,
        )
        async with self._db.write() as conn:
            await conn.execute(admin_audit.insert().values(**row))

    async def reserve_action(
        self,
        *,
        actor: str,
        action: str,
        limit: int,
        target: str | None = None,
        client: str | None = None,
        request_id: str | None = None,
        detail: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> int | None:
        """Reserve one of `actor`'s `limit` actions per minute: the id of a new audit row for
        `action`, outcome `pending`, or None (nothing written) when `actor` already has `limit`
        rows in the minute before `now`.

        The count and the insert are one transaction that holds a lock per actor until it
        commits (PostgreSQL: a transaction-level advisory lock; SQLite: the database's write
        lock, taken by `BEGIN IMMEDIATE`), so reservations of one operator take turns across
        every worker, process and machine on this database: each counts every reservation
        committed before it, pending ones included. At most `limit` get a row per window, and
        none is refused while there is room."""
        now = now or utc_now()
        count = (
            sa.select(sa.func.count())
            .select_from(admin_audit)
            .where(admin_audit.c.actor == actor[:128], admin_audit.c.at >= now - ACTION_WINDOW)
        )
        values = _audit_row(
            at=now,
            actor=actor,
            action=action,
            outcome=PENDING,
            target=target,
            client=client,
            request_id=request_id,
            detail=detail,
        )
        async with self._db.write() as conn:
            await self._take_turn(conn, ACTION_LOCK_CLASS, actor[:128])
            if int((await conn.execute(count)).scalar_one()) >= limit:
                return None
            row = await conn.execute(
                admin_audit.insert().values(**values).returning(admin_audit.c.id)
            )
            return int(row.scalar_one())

    async def reserve_sign_in(
        self,
        *,
        client: str,
        limit: int,
        judge: Callable[[], str | None],
        request_id: str | None = None,
        now: datetime | None = None,
    ) -> SignInSlot | None:
        """Let one sign-in attempt from `client` check its credential, or None (nothing written,
        `judge` not called) when the address already has `limit` sign-in attempts without a
        valid credential in the minute before `now`: rows of `UNKNOWN_ACTOR`, refused, pending
        or failed.

        Under the address's lock (PostgreSQL: a transaction-level advisory lock in its own
        class; SQLite: the database's write lock, taken by `BEGIN IMMEDIATE`) the attempts are
        counted and, when there is room, `judge` checks the credential: `ok` (a valid one)
        writes nothing, `refused` writes the refused row, and None (it cannot tell without
        waiting, e.g. a JWT to verify) writes a `pending` row that holds the slot until the
        caller records the outcome. So attempts from one address take turns across every
        worker, process and machine on this database, and at most `limit` credentials that
        are not valid are checked per window. `judge` runs inside the transaction: it must be
        quick and must not wait."""
        now = now or utc_now()
        address = client[:64]
        count = (
            sa.select(sa.func.count())
            .select_from(admin_audit)
            .where(
                admin_audit.c.client == address,
                admin_audit.c.at >= now - ACTION_WINDOW,
                admin_audit.c.actor == UNKNOWN_ACTOR,
                admin_audit.c.action == SIGN_IN,
            )
        )
        async with self._db.write() as conn:
            await self._take_turn(conn, SIGN_IN_LOCK_CLASS, f"sign-in:{address}")
            if int((await conn.execute(count)).scalar_one()) >= limit:
                return None
            verdict = judge()
            if verdict == "ok":
                return SignInSlot("ok")
            outcome = REFUSED if verdict == REFUSED else PENDING
            values = _audit_row(
                at=now,
                actor=UNKNOWN_ACTOR,
                action=SIGN_IN,
                outcome=outcome,
                client=address,
                request_id=request_id,
            )
            row = await conn.execute(
                admin_audit.insert().values(**values).returning(admin_audit.c.id)
            )
            return SignInSlot(outcome, int(row.scalar_one()))

    async def _take_turn(self, conn: Any, lock_class: int, name: str) -> None:
        """PostgreSQL: wait for `name`'s advisory lock in `lock_class` until this transaction
        ends, and see what committed before each statement (the previous holder's row included,
        whatever the server's default isolation). SQLite: nothing to do, the transaction
        already holds the database's write lock (`BEGIN IMMEDIATE`)."""
        if self._db.dialect != "postgresql":
            return
        await conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL READ COMMITTED"))
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_class, _lock_key(name))))

    async def drop_sign_in(self, row_id: int) -> None:
        """Remove a pending sign-in attempt whose credential proved valid: it is not held
        against its address (the sign-in is audited as the operator's own action)."""
        async with self._db.write() as conn:
            await conn.execute(
                admin_audit.delete().where(
                    admin_audit.c.id == row_id, admin_audit.c.actor == UNKNOWN_ACTOR
                )
            )

    async def finish_action(
        self, row_id: int, *, outcome: str, detail: dict[str, Any] | None = None
    ) -> None:
        """Record the outcome (and detail, when given) of the action reserved as `row_id`."""
        values: dict[str, Any] = {"outcome": outcome[:16]}
        if detail is not None:
            values["detail"] = detail
        async with self._db.write() as conn:
            await conn.execute(
                admin_audit.update().where(admin_audit.c.id == row_id).values(**values)
            )

    async def audit_log(
        self,
        *,
        limit: int = 100,
        before_id: int | None = None,
        actor: str | None = None,
        action: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first."""
        query = sa.select(admin_audit).order_by(admin_audit.c.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(admin_audit.c.id < before_id)
        if actor is not None:
            query = query.where(admin_audit.c.actor == actor)
        if action is not None:
            query = query.where(admin_audit.c.action == action)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "id": row.id,
                "at": iso(row.at),
                "actor": row.actor,
                "action": row.action,
                "target": row.target,
                "outcome": row.outcome,
                "client": row.client,
                "requestId": row.request_id,
                "detail": row.detail,
            }
            for row in rows
        ]

    # --- blocks ----------------------------------------------------------------------------

    async def block(
        self,
        identity_key: str,
        *,
        reason: str,
        expires_at: datetime | None,
        actor: str,
        now: datetime | None = None,
    ) -> Block:
        """Block (or re-block, replacing reason and expiry) an identity."""
        block = Block(identity_key, reason, now or utc_now(), expires_at, actor)
        async with self._db.write() as conn:
            await conn.execute(
                identity_blocks.delete().where(identity_blocks.c.identity_key == identity_key)
            )
            await conn.execute(
                identity_blocks.insert().values(
                    identity_key=identity_key,
                    reason=reason,
                    created_at=block.created_at,
                    expires_at=expires_at,
                    created_by=actor,
                )
            )
            await self._bump(conn)
        return block

    async def unblock(self, identity_key: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                identity_blocks.delete().where(identity_blocks.c.identity_key == identity_key)
            )
            if result.rowcount:
                await self._bump(conn)
        return bool(result.rowcount)

    async def blocks(self) -> list[Block]:
        query = sa.select(identity_blocks).order_by(identity_blocks.c.created_at.desc())
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            Block(r.identity_key, r.reason, r.created_at, r.expires_at, r.created_by) for r in rows
        ]

    async def blocks_version(self) -> int:
        query = sa.select(console_versions.c.version).where(console_versions.c.name == BLOCKS)
        async with self._db.read() as conn:
            value = (await conn.execute(query)).scalar_one_or_none()
        return int(value or 0)

    async def _bump(self, conn: Any) -> None:
        dialect = postgresql if self._db.dialect == "postgresql" else sqlite
        statement = dialect.insert(console_versions).values(name=BLOCKS, version=1)
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=["name"], set_={"version": console_versions.c.version + 1}
            )
        )
