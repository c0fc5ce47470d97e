"""Migration 0004: callers stored as `jwt:<sub>` keep their calls, chats, idempotency keys,
blocks and SQL limit counters once keys name the issuer (issue 13.5), on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection

from vapi_proxy.auth.identity import Identity, identity_key
from vapi_proxy.ledger.cli import configure_db_parser, run_db
from vapi_proxy.ledger.engine import Database
from vapi_proxy.ledger.migrate import (
    MigrationInputError,
    alembic_config,
    current_revision,
    head_revision,
    upgrade_async,
)
from vapi_proxy.ledger.schema import calls, idempotency_keys, identity_blocks
from vapi_proxy.ledger.store import Ledger
from vapi_proxy.limits.sql import counters, reservations, slots
from vapi_proxy.limits.sql import metadata as limits_metadata

ISSUER = "https://tenant.eu.auth0.com/"
BEFORE = "0006"  # the revision 0004 follows
NOW = datetime(2026, 12, 1, tzinfo=UTC)
COUNTER = "limits:per-user:i=jwt:alice:call:quota:day:2026-12-01"
SLOT = "limits:per-user:i=jwt:alice|p=support:call:slots"


@pytest.fixture
async def legacy(db_url: str) -> AsyncIterator[Database]:
    """A ledger at the revision before 0004 holding what the old code wrote."""
    db = Database(db_url)
    await upgrade_async(db, BEFORE)

    def seed(conn: Connection) -> None:
        limits_metadata.create_all(conn)  # limits.backend == ledger.url shares this database
        row = {
            "kind": "call",
            "profile": "support",
            "created_at": NOW,
            "updated_at": NOW,
            "status": "ended",
            "tenant": None,
            "session_id": None,
        }
        conn.execute(
            calls.insert(),
            [
                {
                    **row,
                    "id": "c-alice",
                    "identity_key": "jwt:alice",
                    "identity_hash": "old",
                    "auth_method": "jwt",
                    "tenant": "acme",
                },
                {
                    **row,
                    "id": "c-chat",
                    "kind": "chat",
                    "identity_key": "jwt:alice",
                    "identity_hash": "old",
                    "auth_method": "jwt",
                    "session_id": "s-1",
                },
                {
                    **row,
                    "id": "c-bob",
                    "identity_key": "api_key:bob",
                    "identity_hash": "bob",
                    "auth_method": "api_key",
                },
                {
                    **row,
                    "id": "c-anon",
                    "identity_key": "anonymous:203.0.113.9",
                    "identity_hash": "anon",
                    "auth_method": "anonymous",
                },
            ],
        )
        conn.execute(
            idempotency_keys.insert(),
            [
                {
                    "key": "k1",
                    "identity_key": "jwt:alice",
                    "state": "completed",
                    "response_status": 201,
                    "response_body": b"{}",
                    "created_at": NOW,
                    "expires_at": datetime(2100, 1, 1, tzinfo=UTC),
                }
            ],
        )
        conn.execute(
            identity_blocks.insert(),
            [
                {
                    "identity_key": "jwt:mallory",
                    "reason": "abuse",
                    "created_at": NOW,
                    "created_by": "ops",
                }
            ],
        )
        conn.execute(counters.insert(), [{"key": COUNTER, "value": 7, "expires_at": 9e9}])
        conn.execute(slots.insert(), [{"key": SLOT, "reservation_id": "r1", "expires_at": 9e9}])
        conn.execute(
            reservations.insert(),
            [
                {
                    "id": "r1",
                    "namespace": "limits",
                    "state": "committed",
                    "expires_at": 9e9,
                    "keep_until": 9e9,
                    "holds": json.dumps([["per-user", "quota", COUNTER, 1]]),
                }
            ],
        )

    async with db.write() as conn:
        await conn.run_sync(seed)
    try:
        yield db
    finally:
        await db.aclose()


async def _column(db: Database, column: Any) -> list[Any]:
    async with db.read() as conn:
        return sorted((await conn.execute(sa.select(column))).scalars())


async def test_single_issuer_history_and_counters_carry_over(legacy: Database, db_url: str) -> None:
    assert await upgrade_async(legacy, jwt_issuers=[ISSUER]) == head_revision()
    alice = Identity(subject="alice", method="jwt", issuer=ISSUER)
    new = identity_key("jwt", "alice", ISSUER)
    assert alice.key == new == "jwt:https%3A%2F%2Ftenant.eu.auth0.com%2F:alice"
    ledger = Ledger.from_url(db_url)
    try:
        await ledger.start(auto_migrate=False)
        mine = await ledger.list_calls(alice.key)
        assert sorted(c.id for c in mine) == ["c-alice", "c-chat"]
        # The hash the access log and adoption use follows the new key.
        assert {c.identity_hash for c in mine} == {alice.hashed}
        assert (await ledger.session_owner("s-1")).identity_key == alice.key  # type: ignore[union-attr]
        # Other methods' keys are untouched.
        assert [c.id for c in await ledger.list_calls("api_key:bob")] == ["c-bob"]
        assert [c.id for c in await ledger.list_calls("anonymous:203.0.113.9")] == ["c-anon"]
        # A retry with the same Idempotency-Key still finds the first result.
        claim = await ledger.idempotency_claim("k1", alice.key)
        assert (claim.state, claim.response_status) == ("completed", 201)
    finally:
        await ledger.aclose()
    assert await _column(legacy, identity_blocks.c.identity_key) == [
        identity_key("jwt", "mallory", ISSUER)
    ]
    # Counters, slots and the holds that will release them name the same new key.
    scope = f"i={new}:"
    assert await _column(legacy, counters.c.key) == [COUNTER.replace("i=jwt:alice:", scope)]
    assert await _column(legacy, slots.c.key) == [SLOT.replace("i=jwt:alice|", f"i={new}|")]
    (holds,) = await _column(legacy, reservations.c.holds)
    assert json.loads(holds)[0][2] == COUNTER.replace("i=jwt:alice:", scope)

    # And back: a downgrade restores the old keys.
    cfg = alembic_config()

    def down(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, BEFORE)

    async with legacy.write() as conn:
        await conn.run_sync(down)
    assert await current_revision(legacy) == BEFORE
    assert await _column(legacy, counters.c.key) == [COUNTER]
    assert await _column(legacy, slots.c.key) == [SLOT]
    keys = await _column(legacy, calls.c.identity_key)
    assert keys == ["anonymous:203.0.113.9", "api_key:bob", "jwt:alice", "jwt:alice"]


@pytest.mark.parametrize("issuers", [None, [], [ISSUER, "https://other.example/"]])
async def test_no_single_issuer_stops_the_upgrade_and_changes_nothing(
    legacy: Database, issuers: list[str] | None
) -> None:
    with pytest.raises(MigrationInputError, match="--jwt-issuer"):
        await upgrade_async(legacy, jwt_issuers=issuers)
    assert await current_revision(legacy) == BEFORE
    assert "jwt:alice" in await _column(legacy, calls.c.identity_key)
    assert await _column(legacy, counters.c.key) == [COUNTER]


async def test_without_stored_jwt_callers_no_issuer_is_needed(db_url: str) -> None:
    db = Database(db_url)
    try:
        await upgrade_async(db, BEFORE)
        assert await upgrade_async(db, jwt_issuers=[ISSUER, "https://other.example/"]) == (
            head_revision()
        )
    finally:
        await db.aclose()


def _db_upgrade(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    configure_db_parser(parser)
    out = io.StringIO()
    return run_db(parser.parse_args(["upgrade", *argv]), out=out), out.getvalue()


def test_db_upgrade_learns_the_issuer_from_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    import asyncio

    async def seed() -> None:
        db = Database(url)
        try:
            await upgrade_async(db, BEFORE)
            async with db.write() as conn:
                await conn.execute(
                    calls.insert().values(
                        id="c1",
                        kind="call",
                        identity_key="jwt:alice",
                        identity_hash="x",
                        auth_method="jwt",
                        profile="p",
                        created_at=NOW,
                        updated_at=NOW,
                        status="ended",
                    )
                )
        finally:
            await db.aclose()

    asyncio.run(seed())
    monkeypatch.delenv("VAPI_PROXY_CONFIG", raising=False)
    two = tmp_path / "two.yaml"
    two.write_text(
        "auth:\n  methods:\n"
        f"    - {{type: jwt, issuer: '{ISSUER}', secret_env: UNSET_SECRET, algorithms: [HS256]}}\n"
        "    - {type: jwt, issuer: 'https://b/', secret_env: UNSET, algorithms: [HS256]}\n"
        f"ledger: {{url: '{url}'}}\n"
    )
    code, _ = _db_upgrade(["--config", str(two)])
    assert code == 1
    assert "--jwt-issuer" in capsys.readouterr().err
    # One jwt method in the config: its issuer, read without its (unset) secret.
    one = tmp_path / "one.yaml"
    one.write_text(
        "auth:\n  methods:\n"
        f"    - {{type: jwt, issuer: '{ISSUER}', secret_env: UNSET_SECRET, algorithms: [HS256]}}\n"
        f"ledger: {{url: '{url}'}}\n"
    )
    code, out = _db_upgrade(["--config", str(one)])
    assert code == 0, out

    async def keys() -> list[str]:
        db = Database(url)
        try:
            return await _column(db, calls.c.identity_key)
        finally:
            await db.aclose()

    assert asyncio.run(keys()) == [identity_key("jwt", "alice", ISSUER)]


def test_db_upgrade_takes_the_issuer_from_the_command_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    code, out = _db_upgrade(["--database-url", url, "--jwt-issuer", ""])
    assert code == 0 and "revision" in out
