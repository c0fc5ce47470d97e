"""One contract for the ledger over SQLite and PostgreSQL: calls, events, usage, idempotency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vapi_proxy.auth.identity import Identity
from vapi_proxy.ledger import store
from vapi_proxy.ledger.engine import Database
from vapi_proxy.ledger.migrate import current_revision, head_revision, upgrade_async
from vapi_proxy.ledger.records import LedgerEvent
from vapi_proxy.ledger.store import Ledger, LedgerSchemaError

ALICE = Identity(subject="alice", method="jwt", tenant="acme")
BOB = Identity(subject="bob", method="api_key", tenant="acme")
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def status(call_id: str, st: str, ts: int, **extra: Any) -> LedgerEvent:
    return LedgerEvent.from_vapi(
        {"type": "status-update", "status": st, "call": {"id": call_id}, "timestamp": ts, **extra}
    )


def report(call_id: str, ts: int = 9_000, **extra: Any) -> LedgerEvent:
    msg = {
        "type": "end-of-call-report",
        "call": {"id": call_id},
        "timestamp": ts,
        "startedAt": "2026-05-01T12:00:05.000Z",
        "endedAt": "2026-05-01T12:02:05.000Z",
        "endedReason": "customer-ended-call",
        "cost": 0.25,
        "summary": "Asked about billing.",
        "transcript": "x" * 50_000,
    }
    msg.update(extra)
    return LedgerEvent.from_vapi(msg)


async def test_record_call_is_idempotent(ledger: Ledger) -> None:
    assert await ledger.record_call(
        call_id="c1",
        identity=ALICE,
        profile="support",
        max_duration_seconds=300,
        reservation_id="r1",
        request_id="req-1",
        created_at=T0,
    )
    assert not await ledger.record_call(call_id="c1", identity=BOB, profile="other")
    call = await ledger.get_call("c1")
    assert call is not None
    assert (call.identity_key, call.tenant, call.profile) == ("jwt::alice", "acme", "support")
    assert call.identity_hash == ALICE.hashed
    assert call.created_at == T0
    assert call.status == "queued"
    assert call.max_duration_seconds == 300
    assert await ledger.get_call("nope") is None


async def test_events_settle_the_call(ledger: Ledger) -> None:
    await ledger.record_call(call_id="c1", identity=ALICE, profile="support", created_at=T0)
    out = (await ledger.apply_events([(status("c1", "in-progress", 1_000), ())]))[0]
    assert out.known and not out.duplicate and not out.ended_now
    assert out.call is not None and out.call.status == "in-progress"
    out = (await ledger.apply_events([(report("c1"), ())]))[0]
    assert out.ended_now
    call = await ledger.get_call("c1")
    assert call is not None
    assert call.status == "ended"
    assert call.ended_reason == "customer-ended-call"
    assert call.cost_usd == 0.25
    assert call.duration_seconds == 120.0
    assert call.started_at == datetime(2026, 5, 1, 12, 0, 5, tzinfo=UTC)
    assert call.summary == "Asked about billing."


async def test_out_of_order_report_is_not_reverted(ledger: Ledger) -> None:
    await ledger.record_call(call_id="c1", identity=ALICE, profile="support", created_at=T0)
    assert ((await ledger.apply_events([(report("c1"), ())]))[0]).ended_now
    late = (await ledger.apply_events([(status("c1", "in-progress", 1_000), ())]))[0]
    assert not late.ended_now
    late = (
        await ledger.apply_events(
            [(status("c1", "ended", 8_000, endedReason="assistant-ended-call"), ())]
        )
    )[0]
    assert not late.ended_now
    call = await ledger.get_call("c1")
    assert call is not None
    assert (call.status, call.ended_reason, call.cost_usd) == ("ended", "customer-ended-call", 0.25)


async def test_status_ended_then_report_fills_cost(ledger: Ledger) -> None:
    await ledger.record_call(call_id="c1", identity=ALICE, profile="support", created_at=T0)
    first = (
        await ledger.apply_events(
            [(status("c1", "ended", 5_000, endedReason="silence-timed-out"), ())]
        )
    )[0]
    assert first.ended_now
    second = (await ledger.apply_events([(report("c1", endedReason="silence-timed-out"), ())]))[0]
    assert not second.ended_now
    call = await ledger.get_call("c1")
    assert call is not None and call.cost_usd == 0.25 and call.ended_reason == "silence-timed-out"


async def test_duplicates_are_dropped(ledger: Ledger) -> None:
    await ledger.record_call(call_id="c1", identity=ALICE, profile="support", created_at=T0)
    assert not ((await ledger.apply_events([(report("c1"), ())]))[0]).duplicate
    again = (await ledger.apply_events([(report("c1", cost=99.0), ())]))[
        0
    ]  # same timestamp: same key
    assert again.duplicate and again.known
    call = await ledger.get_call("c1")
    assert call is not None and call.cost_usd == 0.25
    # Explicit keys work too, and concurrent deliveries of one key land once.
    ev = LedgerEvent.from_vapi({"type": "hang", "call": {"id": "c1"}}, dedupe_key="k-1")
    outs = [
        o[0] for o in await asyncio.gather(*(ledger.apply_events([(ev, ())]) for _ in range(10)))
    ]
    assert sum(not o.duplicate for o in outs) == 1


async def test_unknown_call_events_are_kept_and_flagged(ledger: Ledger) -> None:
    out = (await ledger.apply_events([(status("ghost", "in-progress", 1), ())]))[0]
    assert (out.known, out.duplicate, out.call) == (False, False, None)
    assert ((await ledger.apply_events([(status("ghost", "in-progress", 1), ())]))[0]).duplicate
    no_id = (await ledger.apply_events([(LedgerEvent.from_vapi({"type": "tool-calls"}), ())]))[0]
    assert not no_id.known
    async with ledger.database.read() as conn:
        import sqlalchemy as sa

        from vapi_proxy.ledger.schema import call_events

        rows = (await conn.execute(sa.select(call_events.c.call_id, call_events.c.known))).all()
    assert sorted(rows, key=str) == sorted([("ghost", False), (None, False)], key=str)
    # The call is recorded after its webhook (the reply raced it): its events become known.
    await ledger.record_call(call_id="ghost", identity=ALICE, profile="support")
    async with ledger.database.read() as conn:
        known = (
            await conn.execute(
                sa.select(call_events.c.known).where(call_events.c.call_id == "ghost")
            )
        ).scalar()
    assert known is True


async def test_payload_is_trimmed(ledger: Ledger) -> None:
    await ledger.record_call(call_id="c1", identity=ALICE, profile="support")
    await ledger.apply_events([(report("c1"), ())])
    import sqlalchemy as sa

    from vapi_proxy.ledger.schema import call_events

    async with ledger.database.read() as conn:
        payload = (await conn.execute(sa.select(call_events.c.payload))).scalar()
    assert "transcript" not in payload
    assert payload["_trimmed"] == ["call", "transcript"]
    assert payload["cost"] == 0.25


async def test_usage_sums(ledger: Ledger) -> None:
    for i, who in enumerate([ALICE, ALICE, BOB]):
        await ledger.record_call(
            call_id=f"c{i}", identity=who, profile="support", created_at=T0 + timedelta(days=i)
        )
        await ledger.apply_events([(report(f"c{i}", cost=0.5 * (i + 1)), ())])
    await ledger.record_call(
        call_id="chat1", identity=ALICE, profile="support", kind="chat", created_at=T0
    )
    await ledger.record_call(call_id="live", identity=ALICE, profile="support", created_at=T0)
    rows = await ledger.usage()
    by = {(r.identity_key, r.kind): r for r in rows}
    alice = by[("jwt::alice", "call")]
    assert (alice.calls, alice.ended, alice.minutes, alice.cost_usd) == (3, 2, 4.0, 1.5)
    assert by[("jwt::alice", "chat")].calls == 1
    assert by[("api_key:bob", "call")].cost_usd == 1.5
    assert [r.identity_key for r in await ledger.usage(identity_key="api_key:bob")] == [
        "api_key:bob"
    ]
    assert sum(r.calls for r in await ledger.usage(tenant="acme")) == 5
    assert sum(r.calls for r in await ledger.usage(tenant="other")) == 0
    since = await ledger.usage(since=T0 + timedelta(days=1), until=T0 + timedelta(days=2))
    assert [(r.identity_key, r.calls) for r in since] == [("jwt::alice", 1)]


async def test_list_calls_newest_first_and_own_only(ledger: Ledger) -> None:
    for i in range(5):
        await ledger.record_call(
            call_id=f"a{i}", identity=ALICE, profile="p", created_at=T0 + timedelta(minutes=i)
        )
    await ledger.record_call(call_id="b0", identity=BOB, profile="p", created_at=T0)
    mine = await ledger.list_calls(ALICE.key, limit=3)
    assert [c.id for c in mine] == ["a4", "a3", "a2"]
    since = await ledger.list_calls(ALICE.key, since=T0 + timedelta(minutes=3))
    assert [c.id for c in since] == ["a4", "a3"]


async def test_idempotency_first_writer_wins(ledger: Ledger) -> None:
    results = await asyncio.gather(
        *(ledger.idempotency_claim("key-1", ALICE.key, request_hash="h1") for _ in range(10))
    )
    assert sorted(r.state for r in results) == ["claimed"] + ["in_progress"] * 9
    assert (await ledger.idempotency_claim("key-1", BOB.key)).state == "claimed"  # per owner
    assert (await ledger.idempotency_claim("key-1", ALICE.key, request_hash="h2")).state == (
        "mismatch"
    )
    got = await ledger.idempotency_get("key-1", ALICE.key)
    assert got is not None and got.state == "in_progress"
    await ledger.idempotency_complete("key-1", ALICE.key, status=201, body=b'{"id":"c1"}')
    replay = await ledger.idempotency_claim("key-1", ALICE.key, request_hash="h1")
    assert (replay.state, replay.response_status, replay.response_body) == (
        "completed",
        201,
        b'{"id":"c1"}',
    )


async def test_idempotency_expiry_and_abandon(ledger: Ledger) -> None:
    assert (await ledger.idempotency_claim("k", ALICE.key, ttl_seconds=60, now=T0)).state == (
        "claimed"
    )
    later = T0 + timedelta(seconds=59)
    assert (await ledger.idempotency_claim("k", ALICE.key, now=later)).state == "in_progress"
    expired = T0 + timedelta(seconds=60)
    assert await ledger.idempotency_get("k", ALICE.key, now=expired) is None
    assert (await ledger.idempotency_claim("k", ALICE.key, now=expired)).state == "claimed"
    await ledger.idempotency_abandon("k", ALICE.key)
    assert (await ledger.idempotency_claim("k", ALICE.key, now=expired)).state == "claimed"
    assert await ledger.idempotency_purge(now=T0 + timedelta(days=30)) == 1


async def test_a_purge_backlog_goes_in_bounded_transactions(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Days of expired keys are deleted a few rows a transaction, so the request path's writes
    never wait behind one long delete; live keys and other callers' same-named keys stay."""
    monkeypatch.setattr(store, "PURGE_BATCH", 3)
    for i in range(8):
        await ledger.idempotency_claim(f"old-{i}", ALICE.key, ttl_seconds=60, now=T0)
    await ledger.idempotency_claim("old-0", BOB.key, ttl_seconds=60, now=T0)
    later = T0 + timedelta(days=2)
    await ledger.idempotency_claim("old-1", BOB.key, ttl_seconds=3600, now=later)
    await ledger.idempotency_claim("new", ALICE.key, ttl_seconds=3600, now=later)
    deleted: list[int] = []
    run_write = ledger._db.run_write

    async def counting(fn: Any) -> Any:
        result = await run_write(fn)
        deleted.append(result)
        return result

    monkeypatch.setattr(ledger._db, "run_write", counting)
    assert await ledger.idempotency_purge(now=later) == 9
    assert deleted == [3, 3, 3, 0]
    monkeypatch.undo()
    assert (await ledger.idempotency_claim("new", ALICE.key, now=later)).state == "in_progress"
    assert (await ledger.idempotency_claim("old-1", BOB.key, now=later)).state == "in_progress"
    assert (await ledger.idempotency_claim("old-1", ALICE.key, now=later)).state == "claimed"
    assert await ledger.idempotency_purge(now=later) == 0


async def test_health(ledger: Ledger) -> None:
    health = await ledger.health()
    assert health.ok, health
    assert "password" not in health.backend


async def test_migrations_from_empty_database_match_the_schema(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from vapi_proxy.ledger.schema import metadata

    db = Database(db_url)
    try:
        assert await current_revision(db) is None
        assert await upgrade_async(db) == head_revision()
        assert await upgrade_async(db) == head_revision()  # idempotent

        def diff(conn: Any) -> list[Any]:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, metadata))

        async with db.read() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await db.aclose()


async def test_start_refuses_a_stale_schema(db_url: str) -> None:
    store = Ledger.from_url(db_url)
    try:
        with pytest.raises(LedgerSchemaError, match="vapi-proxy db upgrade"):
            await store.start(auto_migrate=False)
        await store.start(auto_migrate=True)
        await store.start(auto_migrate=False)
    finally:
        await store.aclose()


async def test_health_when_unreachable(tmp_path: Any) -> None:
    store = Ledger.from_url(f"sqlite:///{tmp_path}/missing/ledger.db")
    try:
        health = await store.health()
        assert not health.ok and health.detail
    finally:
        await store.aclose()


async def test_health_when_postgres_is_unreachable() -> None:
    from tests.support.services import closed_port

    store = Ledger.from_url(f"postgresql://postgres@127.0.0.1:{closed_port()}/x", timeout=1.0)
    try:
        health = await store.health()
        assert not health.ok
        assert health.backend.startswith("postgresql")
        assert health.detail
    finally:
        await store.aclose()
