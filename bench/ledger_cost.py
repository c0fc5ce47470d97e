"""What one ledger write costs, split into its parts: `python -m bench.ledger_cost [N]`.

In-process, on a fresh SQLite ledger in a temp dir, N writes each (default 400): the ledger's
`record_call` as it is (the writer thread, one prepared `executemany` per group commit), one at a
time and 16 at a time; the same row through SQLAlchemy Core on the same writer (`run_write`: what
the ledger did before); a prepared INSERT through the stdlib driver on the event loop (inline,
the floor), on a thread pool (one hop each), and 16 rows per hop and commit; then
`apply_events` (webhook events) at batches of 1 and 32, split into a cost per batch and per
event (building the events is not counted). CPU is the whole
process (all threads). Uses the ledger's private parts to build the alternatives, so it may need
updating when the ledger changes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from vapi_proxy.auth.identity import Identity
from vapi_proxy.ledger import records
from vapi_proxy.ledger.schema import call_events, calls
from vapi_proxy.ledger.store import Ledger

IDENTITY = Identity(subject="bench", method="anonymous")
COLUMNS = (
    "id, kind, identity_key, identity_hash, auth_method, tenant, profile, request_id,"
    " created_at, status, max_duration_seconds, reservation_id, updated_at"
)
INSERT = f"INSERT INTO calls ({COLUMNS}) VALUES ({','.join('?' * 13)}) ON CONFLICT(id) DO NOTHING"  # noqa: S608 - constants only


async def _time(name: str, n: int, fn: Callable[[], Awaitable[Any]], rows: int = 1) -> None:
    await fn()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        await fn()
    total = n * rows
    cpu_us = (time.process_time() - cpu) / total * 1e6
    wall_us = (time.perf_counter() - wall) / total * 1e6
    print(f"{name:60} CPU {cpu_us:6.0f} µs  wall {wall_us:6.0f} µs per row", flush=True)


def _row() -> tuple[Any, ...]:
    now = datetime.now(UTC).isoformat()
    i = IDENTITY
    return (str(uuid.uuid4()), "web", i.key, i.hashed, i.method, None, "p", "r", now, "queued",
            300.0, "x", now)  # fmt: skip


async def main_async(folder: str, n: int) -> None:
    ledger = Ledger.from_url(f"sqlite:///{folder}/ledger.db")
    await ledger.start(auto_migrate=True)
    db = ledger.database
    kw: dict[str, Any] = {"identity": IDENTITY, "profile": "p", "kind": "web", "request_id": "r",
                          "max_duration_seconds": 300.0, "reservation_id": "x"}  # fmt: skip
    await _time(
        "record_call as it is (writer thread, executemany), 1 at a time",
        n,
        lambda: ledger.record_call(call_id=str(uuid.uuid4()), **kw),
    )

    async def sixteen() -> None:
        await asyncio.gather(
            *(ledger.record_call(call_id=str(uuid.uuid4()), **kw) for _ in range(16))
        )

    await _time("record_call as it is, 16 at a time (group commit)", max(1, n // 16), sixteen, 16)

    def statements() -> Callable[[Any], None]:
        cid, now, i = str(uuid.uuid4()), records.utc_now(), IDENTITY
        insert = (
            ledger._insert(calls)
            .values(
                id=cid,
                kind="web",
                identity_key=i.key,
                identity_hash=i.hashed,
                auth_method=i.method,
                tenant=None,
                profile="p",
                request_id="r",
                created_at=now,
                status="queued",
                max_duration_seconds=300.0,
                reservation_id="x",
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        update = (
            call_events.update()
            .where(call_events.c.call_id == cid, call_events.c.known.is_(False))
            .values(known=True)
        )

        def tx(conn: Any) -> None:
            if conn.execute(insert).rowcount == 1:
                conn.execute(update)

        return tx

    await _time(
        "SQLAlchemy Core statements on the writer (run_write, the old way)",
        n,
        lambda: db.run_write(statements()),
    )
    raw = sqlite3.connect(f"{folder}/ledger.db", isolation_level=None, check_same_thread=False)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")

    def raw_tx(rows: int = 1) -> None:
        raw.execute("BEGIN IMMEDIATE")
        raw.executemany(INSERT, [_row() for _ in range(rows)])
        raw.execute("COMMIT")

    async def raw_inline() -> None:
        raw_tx()

    await _time("prepared INSERT, stdlib sqlite3, no hop (blocks the loop)", n, raw_inline)
    pool = ThreadPoolExecutor(1)
    loop = asyncio.get_running_loop()
    await _time(
        "prepared INSERT, stdlib sqlite3, one hop", n, lambda: loop.run_in_executor(pool, raw_tx)
    )
    await _time(
        "prepared INSERT, 16 rows per hop and commit (group commit)",
        max(1, n // 16),
        lambda: loop.run_in_executor(pool, raw_tx, 16),
        rows=16,
    )
    pool.shutdown()
    raw.close()
    await _events(ledger, n, kw)
    await ledger.aclose()


def _message(call_id: str, seq: int) -> dict[str, Any]:
    """A status-update as Vapi sends it (a few hundred bytes of JSON)."""
    return {
        "type": "status-update",
        "status": ("ringing", "in-progress")[seq % 2],
        "timestamp": 1_770_000_000_000 + seq,
        "call": {"id": call_id, "type": "webCall", "orgId": "org", "assistantId": "a"},
        "phoneNumber": None,
        "customer": {"number": "+15550000000"},
    }


async def _events(ledger: Ledger, n: int, kw: dict[str, Any]) -> None:
    """`apply_events` at batches of 1 and 32 (new status-updates of known calls): its cost per
    batch and per event, solved from the two."""
    call_ids = [str(uuid.uuid4()) for _ in range(64)]
    for call_id in call_ids:
        await ledger.record_call(call_id=call_id, **kw)
    seq = iter(range(10**9))

    def batch(size: int) -> list[tuple[records.LedgerEvent, tuple[()]]]:
        return [
            (records.LedgerEvent.from_vapi(_message(call_ids[i % 64], next(seq))), ())
            for i in range(size)
        ]

    cost: dict[int, float] = {}
    for size in (1, 32):
        batches = [batch(size) for _ in range(n + 1)]
        await ledger.apply_events(batches.pop())
        cpu = time.process_time()
        for items in batches:
            await ledger.apply_events(items)
        cost[size] = (time.process_time() - cpu) / n * 1e6
        print(f"{'apply_events, batches of ' + str(size):60} CPU {cost[size]:6.0f} µs per batch")
    per_event = (cost[32] - cost[1]) / 31
    print(f"{'apply_events: per batch / per event':60} CPU {cost[1] - per_event:6.0f} µs"
          f" + {per_event:4.1f} µs per event")  # fmt: skip


def main() -> None:
    n = min(int(sys.argv[1]) if len(sys.argv) > 1 else 400, 10_000)
    with tempfile.TemporaryDirectory(prefix="vapi-ledger-cost-") as folder:
        asyncio.run(main_async(folder, n))


if __name__ == "__main__":
    main()
