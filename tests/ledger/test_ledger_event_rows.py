"""Webhook events as `apply_events` stores them (prepared sqlite3 statements on SQLite,
SQLAlchemy on PostgreSQL): what is read back through the ledger's SQLAlchemy tables (the
console, the CLI and migrations read those) is what was written, on both dialects."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from vapi_proxy.auth.identity import Identity
from vapi_proxy.ledger.batch import GroupCommit
from vapi_proxy.ledger.engine import POOL_OVERFLOW, POOL_SIZE, Database
from vapi_proxy.ledger.records import LedgerEvent, OutboxItem, trim_payload
from vapi_proxy.ledger.schema import call_events, webhook_outbox
from vapi_proxy.ledger.store import Ledger

ALICE = Identity(subject="alice", method="jwt", tenant="acme")


async def _payloads(ledger: Ledger) -> dict[str, Any]:
    async with ledger.database.read() as conn:
        rows = await conn.execute(sa.select(call_events.c.dedupe_key, call_events.c.payload))
        return {row[0]: row[1] for row in rows}


async def test_an_event_stores_the_payload_it_was_given(ledger: Ledger) -> None:
    await ledger.record_call(call_id="c1", identity=ALICE, profile="p")
    message = {
        "type": "status-update",
        "status": "in-progress",
        "call": {"id": "c1"},
        "timestamp": 1,
        "transcript": "secret words",
    }
    event = LedgerEvent.from_vapi(message, payload={"type": "status-update", "kept": True})
    assert event.status == "in-progress"  # read from the message, not the payload
    [outcome] = await ledger.apply_events([(event, ())])
    assert outcome.call is not None and outcome.call.status == "in-progress"
    assert await _payloads(ledger) == {event.dedupe_key: {"type": "status-update", "kept": True}}
    # The default payload is still the message itself.
    assert LedgerEvent.from_vapi(message).payload is message


async def test_what_apply_events_answers_is_what_is_read_back(ledger: Ledger) -> None:
    await ledger.record_call(call_id="c1", identity=ALICE, profile="p")
    ringing = LedgerEvent.from_vapi(
        {"type": "status-update", "status": "ringing", "call": {"id": "c1"}, "timestamp": 1}
    )
    report_message = {
        "type": "end-of-call-report",
        "call": {"id": "c1"},
        "timestamp": 2,
        "startedAt": "2026-05-01T12:00:05.250Z",
        "endedAt": "2026-05-01T12:02:05.000Z",
        "endedReason": "customer-ended-call",
        "cost": 0.25,
        "analysis": {"summary": "Über «billing» ✓", "structuredData": {"n": [1, 2.5, None]}},
        "artifact": {"messages": ["x" * 20_000]},  # trimmed: over the payload limit
    }
    report = LedgerEvent.from_vapi(report_message)
    no_payload = LedgerEvent.from_vapi({"type": "tool-calls"}, dedupe_key="k-none", payload=None)
    outbox = OutboxItem(event_id="e1", target="http://127.0.0.1:1/hook", type="x", body=b"\x00{}")
    received = datetime(2026, 5, 1, 12, 3, 0, 123456, tzinfo=UTC)
    first, second, third = await ledger.apply_events(
        [(ringing, ()), (report, (outbox,)), (no_payload, ())], received_at=received
    )
    assert (first.known, first.duplicate, first.ended_now) == (True, False, False)
    assert (second.known, second.duplicate, second.ended_now) == (True, False, True)
    assert (third.known, third.duplicate, third.call) == (False, False, None)
    stored = await ledger.get_call("c1")
    assert stored is not None and second.call == stored
    assert stored.started_at == datetime(2026, 5, 1, 12, 0, 5, 250000, tzinfo=UTC)
    assert stored.analysis == report_message["analysis"]
    assert stored.summary == "Über «billing» ✓"
    assert stored.updated_at == received
    payloads = await _payloads(ledger)
    assert payloads[report.dedupe_key] == trim_payload(report_message)
    assert payloads[report.dedupe_key]["_trimmed"] == ["artifact", "call"]
    assert payloads["k-none"] is None
    async with ledger.database.read() as conn:
        rows = (await conn.execute(sa.select(webhook_outbox))).all()
        events = (await conn.execute(sa.select(call_events).order_by(call_events.c.id))).all()
    assert [(r.event_id, r.body, r.state, r.attempts, r.created_at) for r in rows] == [
        ("e1", b"\x00{}", "pending", 0, received)
    ]
    assert [(e.known, e.received_at) for e in events] == [(True, received)] * 2 + [
        (False, received)
    ]
    # The call as it is now read from the database (its analysis, times) moves on from there;
    # the same events again, in one batch, are duplicates recorded once.
    again = await ledger.apply_events([(report, (outbox,)), (report, (outbox,))])
    assert [(o.duplicate, o.call) for o in again] == [(True, stored), (True, stored)]
    async with ledger.database.read() as conn:
        assert (
            await conn.execute(sa.select(sa.func.count()).select_from(webhook_outbox))
        ).scalar() == 1


async def test_the_pool_size_is_the_engines(db_url: str) -> None:
    db = Database(db_url)
    try:
        if db.dialect == "postgresql":
            pool: Any = db.engine.sync_engine.pool
            assert db.pool_connections == pool.size() + pool._max_overflow
            assert db.pool_connections == POOL_SIZE + POOL_OVERFLOW
        else:
            assert db.pool_connections == 1
    finally:
        await db.aclose()


async def test_a_group_commit_lets_the_loop_turn_before_taking_a_batch() -> None:
    """Requests read while the batch was being taken join it: with `turns`, a request that
    arrives one loop turn after the first shares its batch (without, it waited for the next)."""
    batches: list[list[str]] = []

    async def write(items: list[str]) -> list[str]:
        batches.append(items)
        return items

    commit: GroupCommit[str, str] = GroupCommit(write, turns=3)

    async def later() -> str:
        await asyncio.sleep(0)
        return await commit.add("b")

    assert await asyncio.gather(commit.add("a"), later()) == ["a", "b"]
    assert batches == [["a", "b"]]
