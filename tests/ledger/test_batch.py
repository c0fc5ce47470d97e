"""Group commit of call rows: concurrent records share transactions and each learns its result."""

from __future__ import annotations

import asyncio

from vapi_proxy.auth.identity import Identity
from vapi_proxy.ledger.records import LedgerEvent
from vapi_proxy.ledger.store import Ledger

ALICE = Identity(subject="alice", method="api_key")


async def test_concurrent_records_are_all_written_once(ledger: Ledger) -> None:
    ids = [f"call-{i}" for i in range(60)]
    # Every id twice, interleaved: a retry racing its original, inside and across batches.
    results = await asyncio.gather(
        *(ledger.record_call(call_id=i, identity=ALICE, profile="p") for i in ids + ids)
    )
    first, second = results[: len(ids)], results[len(ids) :]
    assert sum(first) + sum(second) == len(ids)
    assert all(a != b for a, b in zip(first, second, strict=True))
    rows = await ledger.list_calls(ALICE.key, limit=1000)
    assert sorted(r.id for r in rows) == sorted(ids)


async def test_an_event_that_beat_its_row_becomes_known(ledger: Ledger) -> None:
    ringing = {"type": "status-update", "status": "ringing", "call": {"id": "c9"}}
    [early] = await ledger.apply_events([(LedgerEvent.from_vapi(ringing), ())])
    assert early.known is False
    assert await ledger.record_call(call_id="c9", identity=ALICE, profile="p") is True
    talking = {"type": "status-update", "status": "in-progress", "call": {"id": "c9"}}
    [later] = await ledger.apply_events([(LedgerEvent.from_vapi(talking), ())])
    assert later.known is True
    record = await ledger.get_call("c9")
    assert record is not None
    assert record.status == "in-progress"
