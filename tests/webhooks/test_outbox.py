"""The ledger's webhook outbox on SQLite and PostgreSQL: rows written with an event (once),
claimed with a lease, retried, delivered or parked; adoption of an attributed call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.services import fresh_postgres_database
from vapi_proxy.ledger import store
from vapi_proxy.ledger.records import LedgerEvent, OutboxItem
from vapi_proxy.ledger.store import Ledger

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
    first = (await ledger.apply_events([(event("c1", "ended", 1), [item])], received_at=T0))[0]
    again = (await ledger.apply_events([(event("c1", "ended", 1), [item])], received_at=T0))[0]
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


async def test_delivered_rows_are_purged_in_bounded_transactions(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "PURGE_BATCH", 2)
    await ledger.outbox_add(
        [OutboxItem(f"ev-{i}", "http://app/x", "status-update", b"{}") for i in range(7)], now=T0
    )
    claimed = await ledger.outbox_claim(limit=10, lease_seconds=30, now=T0)
    for entry in claimed[:5]:
        await ledger.outbox_delivered(entry.id, now=T0)
    await ledger.outbox_delivered(claimed[5].id, now=T0 + timedelta(days=1))
    assert await ledger.outbox_purge(before=T0 + timedelta(seconds=1)) == 5
    assert await ledger.outbox_counts() == {"delivered": 1, "pending": 1}


async def test_an_expired_lease_returns_the_row(ledger: Ledger) -> None:
    await ledger.outbox_add([OutboxItem("ev", "http://app/x", "hang", b"{}")], now=T0)
    assert len(await ledger.outbox_claim(limit=5, lease_seconds=30, now=T0)) == 1
    again = await ledger.outbox_claim(limit=5, lease_seconds=30, now=T0 + timedelta(seconds=31))
    assert [e.attempts for e in again] == [2]


async def test_adopting_a_call_replays_its_stored_events(ledger: Ledger) -> None:
    await ledger.apply_events([(event("lost", "in-progress", 1), ())], received_at=T0)
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
    await ledger.apply_events([(report, ())], received_at=T0)
    call = await ledger.adopt_call(
        call_id="lost", identity_hash="f" * 16, profile="p", kind="web", created_at=T0
    )
    assert call is not None
    assert (call.status, call.cost_usd, call.duration_seconds) == ("ended", 0.3, 120.0)
    assert call.identity_key == "adopted:" + "f" * 16
    assert (
        await ledger.adopt_call(call_id="lost", identity_hash="x", profile="p", kind="web") is None
    )


def _message(call_id: str, kind: str, stamp: int, **extra: object) -> LedgerEvent:
    return LedgerEvent.from_vapi(
        {"type": kind, "timestamp": stamp, "call": {"id": call_id}, **extra}
    )


def _script() -> list[LedgerEvent]:
    report = {
        "endedReason": "customer-ended-call",
        "cost": 0.2,
        "startedAt": "2026-11-27T12:00:00Z",
        "endedAt": "2026-11-27T12:01:00Z",
    }
    return [
        _message("a", "status-update", 1, status="ringing"),
        _message("a", "status-update", 2, status="in-progress"),
        _message("a", "status-update", 2, status="in-progress"),  # duplicate in the same batch
        _message("b", "end-of-call-report", 3, **report),  # report first
        _message("b", "status-update", 4, status="in-progress"),  # late: changes nothing
        _message("b", "status-update", 5, status="ended", endedReason="silence-timed-out"),
        _message("ghost", "status-update", 6, status="ended"),  # unknown call
        _message("a", "status-update", 7, status="ended", endedReason="hangup"),
        _message("a", "status-update", 1, status="ringing"),  # a retry of the first
    ]


async def test_a_batch_has_the_same_outcomes_as_one_event_at_a_time(ledger: Ledger) -> None:
    from vapi_proxy.auth.identity import Identity

    who = Identity("alice", "api_key")
    for prefix in ("one-", "batch-"):
        for call_id in ("a", "b"):
            await ledger.record_call(call_id=prefix + call_id, identity=who, profile="p")

    def renamed(prefix: str) -> list[LedgerEvent]:
        out = []
        for e in _script():
            call_id = prefix + str(e.call_id)
            out.append(
                LedgerEvent.from_vapi(
                    {**(e.payload or {}), "call": {"id": call_id}},
                    dedupe_key=prefix + e.dedupe_key,
                )
            )
        return out

    item = OutboxItem("x", "http://app/x", "status-update", b"{}")
    singles = [
        (await ledger.apply_events([(e, [item])], received_at=T0))[0] for e in renamed("one-")
    ]
    batched = await ledger.apply_events([(e, [item]) for e in renamed("batch-")], received_at=T0)

    def shape(outcomes: list[object]) -> list[tuple[object, ...]]:
        return [
            (o.known, o.duplicate, o.ended_now, o.call.status if o.call else None)  # type: ignore[attr-defined]
            for o in outcomes
        ]

    assert shape(batched) == shape(singles)
    for call_id in ("a", "b"):
        one = await ledger.get_call("one-" + call_id)
        many = await ledger.get_call("batch-" + call_id)
        assert one is not None and many is not None
        fields = ("status", "ended_reason", "cost_usd", "duration_seconds", "started_at")
        assert [getattr(one, f) for f in fields] == [getattr(many, f) for f in fields]
    counts = await ledger.outbox_counts()
    assert counts == {"pending": 14}  # 7 first deliveries each way
