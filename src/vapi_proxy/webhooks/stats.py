"""Counters of webhook intake, answers and forwarding, for the logs, the metrics and the console.

Plain integers on one object per process (`runtime.webhook_stats`); the metrics layer listens to
every increase (`Tallies`) without the webhook code knowing about it, and so does
`WebhookTallies`, which keeps the intake counters the console shows (received, verified, refused
by reason, duplicates) in the ledger's database for every worker and replica: added up in
memory and written every `FLUSH_SECONDS` as one upsert per 5-minute bucket and process, never a
write per delivery (whoever can reach the webhook URL can send any number of forged ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from vapi_proxy.ledger.engine import Database
from vapi_proxy.ledger.schema import webhook_tallies
from vapi_proxy.tally import Tallies, Tally

logger = logging.getLogger("vapi_proxy.webhooks.stats")

BUCKET_SECONDS = 300
"""The tallies' time resolution: a window is rounded out to whole 5-minute buckets."""
FLUSH_SECONDS = 10.0
"""How often each process adds what it counted to the database (and when it stops)."""
KEEP = timedelta(days=31)
"""The console's longest window: older buckets are deleted."""
PURGE_SECONDS = 3600.0
"""How often each process deletes buckets older than `KEEP`."""
MAX_PENDING = 1024
"""Counts kept in memory at most, (bucket, counter, reason) each: while the database cannot be
written, the newest buckets are kept and older counts dropped (and logged)."""
COUNTERS = ("received", "verified", "rejected", "duplicates")
"""The `WebhookStats` fields the console shows and `WebhookTallies` keeps."""
_KEPT = frozenset(COUNTERS)
_REASON_LENGTH = 64


@dataclass
class WebhookStats(Tallies):
    received: int = 0
    verified: int = 0
    rejected: Tally = field(default_factory=Tally)
    """Refused deliveries by reason (`hmac_mismatch`, `hmac_expired`, `no_credential`, …)."""
    by_type: Tally = field(default_factory=Tally)
    duplicates: int = 0
    unknown_calls: int = 0
    adopted_calls: int = 0
    settled: int = 0
    errors: int = 0
    assistant_requests: Tally = field(default_factory=Tally)
    """assistant-request answers by outcome (`profile`, `destination`, `error`, `limited`, …)."""
    relayed: Tally = field(default_factory=Tally)
    """Request types relayed to the app, by outcome (`ok`, `failed`, `late`)."""
    forwarded: int = 0
    forward_failures: int = 0
    forward_parked: int = 0

    def snapshot(self) -> dict[str, object]:
        return {
            "received": self.received,
            "verified": self.verified,
            "rejected": dict(self.rejected),
            "by_type": dict(self.by_type),
            "duplicates": self.duplicates,
            "unknown_calls": self.unknown_calls,
            "adopted_calls": self.adopted_calls,
            "settled": self.settled,
            "errors": self.errors,
            "assistant_requests": dict(self.assistant_requests),
            "relayed": dict(self.relayed),
            "forwarded": self.forwarded,
            "forward_failures": self.forward_failures,
            "forward_parked": self.forward_parked,
        }


def process_id() -> str:
    """This process in the tallies' rows: host, pid and a random part (a reused pid on a
    restarted host is another process)."""
    return f"{socket.gethostname()[:32]}/{os.getpid()}/{secrets.token_hex(4)}"


def _bucket_start(bucket: int) -> datetime:
    return datetime.fromtimestamp(bucket * BUCKET_SECONDS, UTC)


def _upsert(rows: list[dict[str, Any]], conn: sa.Connection) -> None:
    """Add each row's count to its bucket's row (one statement for all of them)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(webhook_tallies)
    statement = statement.on_conflict_do_update(
        index_elements=["bucket", "process", "counter", "reason"],
        set_={"count": webhook_tallies.c["count"] + statement.excluded["count"]},
    )
    conn.execute(statement, rows)


def _purge(before: datetime, conn: sa.Connection) -> None:
    conn.execute(sa.delete(webhook_tallies).where(webhook_tallies.c.bucket < before))


class WebhookTallies:
    """The console's webhook intake counters across workers and replicas (see the module
    docstring): `record` listens to `WebhookStats`, `flush` adds the increases to the table,
    `totals` sums the table over a window plus what this process has not written yet."""

    def __init__(
        self,
        db: Database,
        *,
        process: str | None = None,
        clock: Callable[[], float] = time.time,
        interval: float = FLUSH_SECONDS,
    ) -> None:
        self._db = db
        self.process = process or process_id()
        self._clock = clock
        self.interval = interval
        self._pending: dict[tuple[int, str, str], int] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._round_task: asyncio.Task[None] | None = None
        self._purged_at = -math.inf
        self.writes = 0
        """Statements written (upserts and purges): a handful per minute whatever the traffic."""
        self.dropped = 0
        """Counts given up while the database could not be written (beyond `MAX_PENDING`)."""

    # --- on the request path: a dict update, no I/O -----------------------------------------

    def record(self, field_name: str, key: str, increase: int) -> None:
        """A `Tallies` listener: count the increase in this bucket (the console's counters
        only)."""
        if field_name not in _KEPT:
            return
        reason = key[:_REASON_LENGTH] if field_name == "rejected" else ""
        slot = (int(self._clock() // BUCKET_SECONDS), field_name, reason)
        pending = self._pending
        if slot in pending:
            pending[slot] += increase
        elif len(pending) < MAX_PENDING:
            pending[slot] = increase
        else:
            self.dropped += increase

    # --- background ------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="webhook-tallies")

    async def aclose(self) -> None:
        """Stop the periodic flush and write what is left (a worker draining or stopping)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._round_task is not None:
            await self._round_task  # a round the cancel caught half-way: let it finish
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            # Shielded: a flush cancelled half-way (the app stopping) would not know whether
            # its write landed; `aclose` waits for the round to finish instead.
            self._round_task = asyncio.create_task(self._round())
            await asyncio.shield(self._round_task)

    async def _round(self) -> None:
        await self.flush()
        if time.monotonic() - self._purged_at < PURGE_SECONDS:
            return
        self._purged_at = time.monotonic()
        try:
            await self.purge()
        except Exception as exc:
            logger.warning(
                "could not delete old webhook tallies", extra={"fields": {"error": repr(exc)}}
            )

    async def flush(self) -> bool:
        """Add this process's increases since the last flush to the table, in one statement.
        If the database cannot be written, they are kept for the next flush (up to
        `MAX_PENDING` counts) and a warning logged; never raises. True when nothing is left."""
        async with self._lock:
            pending, self._pending = self._pending, {}
            if not pending:
                return True
            rows = [
                {
                    "bucket": _bucket_start(bucket),
                    "process": self.process,
                    "counter": counter,
                    "reason": reason,
                    "count": count,
                }
                for (bucket, counter, reason), count in sorted(pending.items())
            ]
            try:
                await self._db.run_write(partial(_upsert, rows))
            except Exception as exc:
                self._keep(pending)
                logger.warning(
                    "could not save the webhook tallies; kept for the next try",
                    extra={"fields": {"error": repr(exc), "pending": len(self._pending)}},
                )
                return False
            self.writes += 1
            return True

    def _keep(self, unsaved: dict[tuple[int, str, str], int]) -> None:
        """Put counts that were not written back with those counted since, within bounds."""
        merged = dict(unsaved)
        for slot, count in self._pending.items():
            merged[slot] = merged.get(slot, 0) + count
        oldest = int((self._clock() - KEEP.total_seconds()) // BUCKET_SECONDS)
        slots = sorted(merged, reverse=True)  # newest bucket first
        kept = [s for s in slots if s[0] >= oldest][:MAX_PENDING]
        lost = sum(merged[s] for s in slots) - sum(merged[s] for s in kept)
        if lost:
            self.dropped += lost
            logger.warning(
                "webhook tallies dropped while the database could not be written",
                extra={"fields": {"dropped": lost}},
            )
        self._pending = {s: merged[s] for s in kept}

    async def purge(self) -> None:
        """Delete buckets that ended before the console's longest window (`KEEP`)."""
        oldest = int((self._clock() - KEEP.total_seconds()) // BUCKET_SECONDS)
        await self._db.run_write(partial(_purge, _bucket_start(oldest)))
        self.writes += 1

    # --- the console ------------------------------------------------------------------------

    async def totals(self, *, since: datetime) -> dict[str, Any]:
        """Intake counters of every worker and replica over the buckets from `since` on (the
        bucket holding `since` included), with this process's unwritten increases."""
        first = int(since.timestamp() // BUCKET_SECONDS)
        query = (
            sa.select(
                webhook_tallies.c.counter,
                webhook_tallies.c.reason,
                sa.func.sum(webhook_tallies.c["count"]).label("n"),
            )
            .where(webhook_tallies.c.bucket >= _bucket_start(first))
            .group_by(webhook_tallies.c.counter, webhook_tallies.c.reason)
        )
        # Under the lock: a flush in progress has either landed (in the rows) or not (still
        # pending), so nothing is counted twice or missed.
        async with self._lock:
            async with self._db.read() as conn:
                rows = [(r.counter, r.reason, int(r.n or 0)) for r in await conn.execute(query)]
            rows.extend(
                (counter, reason, count)
                for (bucket, counter, reason), count in self._pending.items()
                if bucket >= first
            )
        plain = dict.fromkeys(("received", "verified", "duplicates"), 0)
        rejected: dict[str, int] = {}
        for counter, reason, count in rows:
            if counter == "rejected":
                rejected[reason] = rejected.get(reason, 0) + count
            elif counter in plain:
                plain[counter] += count
        return {
            "received": plain["received"],
            "verified": plain["verified"],
            "rejected": dict(sorted(rejected.items())),
            "duplicates": plain["duplicates"],
        }
