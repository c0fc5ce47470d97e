"""The ledger's webhook outbox on SQLite and PostgreSQL: rows written with an event (once),
claimed with a lease, retried, delivered or parked; adoption of an attributed call."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest_services

from conftest_services import fresh_postgres_database
from vapi_proxy.ledger.store import Ledger, LedgerEvent, OutboxItem

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    async def open_ledger(url: str) -> Ledger:
        store = Ledger.from_url(url)
        await store.start(auto_migrate=True)
        return store

    if request.param == "sqlite":
        store = await open_ledger(f"sqlite:///{tmp_path / 'outbox.db'}")
        yield store
        await store.aclose()
        return
    async with fresh_postgres_database() as url:
        store = await open_ledger(url)
        yield store
        await store.aclose()


def event(call_id: str, status: str, stamp: int) -> LedgerEvent:
    return LedgerEvent.from_vapi(
        {"type": "status-update", "status": status, "timestamp": stamp, "call": {"id": call_id}}
    )


async def test_outbox_rows_come_with_the_first_delivery_only(ledger: Ledger) -> None:
    item = OutboxItem("ev-1", "http://127.0.0.1:9/events", "status-update", b'{"message":{}}')
    first = await ledger.apply_event(event("c1", "ended", 1), outbox=[item], received_at=T0)
    again = await ledger.apply_event(event("c1", "ended", 1), outbox=[item], received_at=T0)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert await ledger.outbox_counts() == {"pending": 1}


async def test_claim_lease_retry_deliver_and_park(ledger: Ledger) -> None:
    items = [OutboxItem(f"ev-{i}", "http://app/x", "status-update", b"{}") for i in range(3)]
    await ledger.outbox_add(items, now=T0)
    claimed = await ledger.outbox_claim(limit=2, lease_seconds=30, now=T0)
    assert [e.event_id for e in claimed] == ["ev-0", "ev-1"]
    assert all(e.attempts == 1 and e.body == b"{}" for e in claimed)
    # Leased rows stay hidden from a second worker; the third row is still there.
    other = await ledger.outbox_claim(limit=10, lease_seconds=30, now=T0)
    assert [e.event_id for e in other] == ["ev-2"]
    await ledger.outbox_delivered(claimed[0].id, now=T0)
    await ledger.outbox_failed(claimed[1].id, error="HTTP 503", retry_at=T0 + timedelta(minutes=5))
    await ledger.outbox_failed(other[0].id, error="timeout", retry_at=None)
    assert (
        await ledger.outbox_claim(limit=10, lease_seconds=30, now=T0 + timedelta(minutes=1)) == []
    )
    retried = await ledger.outbox_claim(limit=10, lease_seconds=30, now=T0 + timedelta(minutes=6))
    assert [(e.event_id, e.attempts) for e in retried] == [("ev-1", 2)]
    assert await ledger.outbox_counts() == {"delivered": 1, "pending": 1, "parked": 1}
    assert await ledger.outbox_purge(before=T0 + timedelta(seconds=1)) == 1


async def test_an_expired_lease_returns_the_row(ledger: Ledger) -> None:
    await ledger.outbox_add([OutboxItem("ev", "http://app/x", "hang", b"{}")], now=T0)
    assert len(await ledger.outbox_claim(limit=5, lease_seconds=30, now=T0)) == 1
    again = await ledger.outbox_claim(limit=5, lease_seconds=30, now=T0 + timedelta(seconds=31))
    assert [e.attempts for e in again] == [2]


async def test_adopting_a_call_replays_its_stored_events(ledger: Ledger) -> None:
    await ledger.apply_event(event("lost", "in-progress", 1), received_at=T0)
    report = LedgerEvent.from_vapi(
        {
            "type": "end-of-call-report",
            "timestamp": 2,
            "call": {"id": "lost"},
            "endedReason": "customer-ended-call",
            "cost": 0.3,
            "startedAt": "2026-11-27T12:00:00Z",
            "endedAt": "2026-11-27T12:02:00Z",
        }
    )
    await ledger.apply_event(report, received_at=T0)
    call = await ledger.adopt_call(
        call_id="lost", identity_hash="f" * 16, profile="p", kind="web", created_at=T0
    )
    assert call is not None
    assert (call.status, call.cost_usd, call.duration_seconds) == ("ended", 0.3, 120.0)
    assert call.identity_key == "adopted:" + "f" * 16
    assert (
        await ledger.adopt_call(call_id="lost", identity_hash="x", profile="p", kind="web") is None
    )
