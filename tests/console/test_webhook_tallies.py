"""The console's webhook verification counters across workers and replicas: each process counts
deliveries in memory and adds them to the ledger's `webhook_tallies` (one upsert per flush,
never a write per delivery); `GET /admin/api/webhooks` sums every process's rows over its window
plus its own unwritten counts. Two replicas (two apps, two runtimes) on one ledger, on SQLite
and on PostgreSQL; flushes are run explicitly on each server's loop, nothing waits on a timer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.support.console import admin_proxy
from tests.support.proxy import ProxyFactory
from tests.support.webhooks import on_server, runtime, write_secret
from vapi_proxy.auth.api_key import generate_key
from vapi_proxy.ledger.engine import Database
from vapi_proxy.ledger.migrate import upgrade_async
from vapi_proxy.ledger.schema import webhook_tallies
from vapi_proxy.metrics import Metrics
from vapi_proxy.testing import ServerThread
from vapi_proxy.webhooks.stats import BUCKET_SECONDS, WebhookStats, WebhookTallies

SECRET = "tallies-webhook-secret-0123456789"


Replica = Callable[[], ServerThread]


@pytest.fixture
def replica(make_proxy: ProxyFactory, shared_ledger: str, tmp_path: Path) -> Replica:
    """Starts one more replica (its own app, runtime and engine) on the shared ledger."""
    admin_key = generate_key()
    secret_file = write_secret(tmp_path, "webhook-secret", SECRET)

    def shared(config: dict[str, Any]) -> None:
        config["ledger"] = {"url": shared_ledger, "auto_migrate": True}
        config["limits"] = {"backend": "memory://"}
        config["webhooks"] = {"verify": [{"type": "bearer", "secret_file": secret_file}]}

    def start() -> ServerThread:
        server = admin_proxy(make_proxy, admin_key, shared)
        server.admin_key = admin_key  # type: ignore[attr-defined]
        return server

    return start


def _deliver(server: ServerThread, n: int, headers: dict[str, str]) -> int:
    message = {"type": "status-update", "status": "ended", "call": {"id": f"c-{n}"}, "timestamp": n}
    body = {"message": message}
    return httpx.post(server.url + "/webhook", json=body, headers=headers, timeout=10).status_code


def verified(server: ServerThread, n: int) -> None:
    assert _deliver(server, n, {"Authorization": f"Bearer {SECRET}"}) == 200


def forged(server: ServerThread, n: int, headers: dict[str, str]) -> None:
    assert _deliver(server, n, headers) == 401


WRONG = {"Authorization": "Bearer not-the-secret"}  # bearer_mismatch
NONE: dict[str, str] = {}  # no_credential
SCHEME = {"Authorization": "Basic c2VjcmV0"}  # bearer_bad_scheme


def verification(server: ServerThread, hours: int | None = None) -> dict[str, Any]:
    query = "" if hours is None else f"?hours={hours}"
    reply = httpx.get(
        server.url + "/admin/api/webhooks" + query,
        headers={"Authorization": f"Bearer {server.admin_key}"},  # type: ignore[attr-defined]
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()["verification"]
    return result


def counts(result: dict[str, Any]) -> tuple[int, int, dict[str, int], int]:
    return result["received"], result["verified"], result["rejected"], result["duplicates"]


def flush(server: ServerThread) -> None:
    assert on_server(server, runtime(server).webhook_tallies.flush()) is True


def test_every_replica_reports_the_deliveries_of_all_of_them(replica: Replica) -> None:
    one, two = replica(), replica()

    # Replica one: three events (one delivered twice), two with a wrong secret, one without.
    for n in (1, 2, 3, 3):
        verified(one, n)
    forged(one, 10, WRONG)
    forged(one, 11, WRONG)
    forged(one, 12, NONE)
    mine = (7, 4, {"bearer_mismatch": 2, "no_credential": 1}, 1)
    # Not written yet (or written by a timed flush): replica one sees its own at once...
    answer = verification(one)
    assert counts(answer) == mine
    assert answer["scope"] == "all workers and replicas, last 24 hours"

    # Replica two: two events, one wrong secret, two with the wrong scheme.
    verified(two, 4)
    verified(two, 5)
    forged(two, 13, WRONG)
    forged(two, 14, SCHEME)
    forged(two, 15, SCHEME)
    flush(one)
    flush(two)
    total = (12, 6, {"bearer_bad_scheme": 2, "bearer_mismatch": 3, "no_credential": 1}, 1)
    assert counts(verification(one)) == total
    assert counts(verification(two)) == total
    # ...and a flush with nothing new writes nothing and changes nothing.
    flush(one)
    assert counts(verification(two, hours=1)) == total

    # One more refusal on replica one, not flushed: its shutdown writes it. A new replica
    # (a restarted worker: a new runtime, nothing in memory) reports everything.
    forged(one, 16, NONE)
    one.stop()
    three = replica()
    expected = (13, 6, {"bearer_bad_scheme": 2, "bearer_mismatch": 3, "no_credential": 2}, 1)
    assert counts(verification(three)) == expected
    assert counts(verification(two)) == expected


def _bucket(at: datetime) -> datetime:
    return datetime.fromtimestamp(at.timestamp() // BUCKET_SECONDS * BUCKET_SECONDS, UTC)


async def _add_row(db: Database, at: datetime, reason: str, count: int) -> None:
    row = {
        "bucket": _bucket(at),
        "process": "elsewhere/1/0000",
        "counter": "rejected",
        "reason": reason,
        "count": count,
    }
    async with db.write() as conn:
        await conn.execute(sa.insert(webhook_tallies), [row])


async def _buckets(db: Database) -> list[datetime]:
    async with db.read() as conn:
        rows = await conn.execute(sa.select(webhook_tallies.c.bucket).distinct())
        return sorted(r.bucket for r in rows)


def test_the_window_excludes_older_buckets_and_old_ones_are_deleted(replica: Replica) -> None:
    server = replica()
    db = runtime(server).ledger.database
    now = datetime.now(UTC)
    on_server(server, _add_row(db, now - timedelta(hours=3), "hmac_expired", 7))
    on_server(server, _add_row(db, now - timedelta(days=32), "hmac_mismatch", 5))
    forged(server, 1, WRONG)
    flush(server)

    assert counts(verification(server, hours=1)) == (1, 0, {"bearer_mismatch": 1}, 0)
    assert verification(server, hours=1)["scope"] == "all workers and replicas, last 1 hours"
    assert verification(server, hours=4)["rejected"] == {"bearer_mismatch": 1, "hmac_expired": 7}
    # The 32-day-old bucket is outside the longest window, and the purge deletes it.
    assert verification(server, hours=24 * 31)["rejected"] == {
        "bearer_mismatch": 1,
        "hmac_expired": 7,
    }
    on_server(server, runtime(server).webhook_tallies.purge())
    remaining = on_server(server, _buckets(db))
    assert _bucket(now - timedelta(hours=3)) in remaining
    assert len(remaining) in (2, 3)  # this bucket (and the one before, if the test crossed it)
    assert min(remaining) > now - timedelta(days=31)


def test_a_burst_of_forged_deliveries_costs_a_bounded_number_of_writes(
    replica: Replica,
) -> None:
    """However many forged deliveries arrive, the database sees one upsert per flush and at
    most one row per bucket and reason for this process."""
    server = replica()
    db = runtime(server).ledger.database
    tallies = runtime(server).webhook_tallies
    flush(server)
    writes: list[str] = []

    def counting(name: str) -> None:
        method = getattr(db, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            writes.append(name)
            return method(*args, **kwargs)

        setattr(db, name, call)

    for name in ("write", "run_write", "run_raw", "add"):
        counting(name)
    burst = 300
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(burst):
            reply = client.post("/webhook", json={"message": {"type": "x"}}, headers=WRONG)
            assert reply.status_code == 401
    # No write for the deliveries themselves: at most the background rounds that fell within
    # the burst (a timed flush every 10 s, its hourly purge, the ledger's own upkeep).
    timed = len(writes)
    assert timed <= 3, writes
    flush(server)
    assert len(writes) <= timed + 1
    assert tallies.dropped == 0

    async def rows() -> int:
        query = sa.select(sa.func.count()).where(webhook_tallies.c.process == tallies.process)
        async with db.read() as conn:
            return int((await conn.execute(query)).scalar_one())

    # received and bearer_mismatch, in one 5-minute bucket (two if the burst crossed one).
    assert on_server(server, rows()) <= 4
    assert counts(verification(server)) == (burst, 0, {"bearer_mismatch": burst}, 0)


async def test_a_failed_flush_keeps_the_counts_for_the_next(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(db_url)
    try:
        stats = WebhookStats()
        tallies = WebhookTallies(db, process="test/1/0001")
        stats.also_listen(tallies.record)
        stats.received += 3
        stats.verified += 1
        stats.rejected["hmac_mismatch"] += 2
        stats.duplicates += 1
        stats.by_type["status-update"] += 1  # not a console counter: not kept
        # No table yet (the ledger is not migrated): the flush fails, logs, keeps everything.
        with caplog.at_level(logging.WARNING, logger="vapi_proxy.webhooks.stats"):
            assert await tallies.flush() is False
        assert "could not save the webhook tallies" in caplog.text
        stats.rejected["hmac_mismatch"] += 1
        await upgrade_async(db)
        assert await tallies.flush() is True
        assert tallies.writes == 1
        since = datetime.now(UTC) - timedelta(hours=1)
        assert await tallies.totals(since=since) == {
            "received": 3,
            "verified": 1,
            "rejected": {"hmac_mismatch": 3},
            "duplicates": 1,
        }
        # Another process's tallies over the same table (a replica) sees the same.
        other = WebhookTallies(db, process="test/2/0002")
        assert (await other.totals(since=since))["rejected"] == {"hmac_mismatch": 3}
    finally:
        await db.aclose()


def test_the_tallies_listen_beside_the_metrics() -> None:
    """`also_listen` adds a listener: the metrics still record every increase."""
    metrics = Metrics()
    stats = WebhookStats()
    metrics.listen(webhook_stats=stats)
    heard: list[tuple[str, str, int]] = []
    stats.also_listen(lambda *event: heard.append(event))
    stats.rejected["hmac_expired"] += 2
    stats.received += 1
    assert heard == [("rejected", "hmac_expired", 2), ("received", "", 1)]
    sample = metrics.registry.get_sample_value(
        "vapi_proxy_webhook_rejections_total", {"reason": "hmac_expired"}
    )
    assert sample == 2


async def test_the_background_round_flushes_and_purges(db_url: str) -> None:
    """Started, the tallies write on their own (here every few milliseconds, instead of 10 s)
    and delete old buckets on their first round; stopped, they write what is left."""
    db = Database(db_url)
    await upgrade_async(db)
    tallies = WebhookTallies(db, process="test/3/0003", interval=0.01)
    since = datetime.now(UTC) - timedelta(hours=1)
    try:
        await _add_row(db, datetime.now(UTC) - timedelta(days=40), "hmac_expired", 1)
        tallies.record("received", "", 2)
        tallies.start()
        async with asyncio.timeout(10):
            while tallies.writes < 2:  # the flush and the purge
                await asyncio.sleep(0.01)
        assert _bucket(datetime.now(UTC) - timedelta(days=40)) not in await _buckets(db)
        tallies.record("rejected", "no_credential", 1)
        await tallies.aclose()
        other = WebhookTallies(db, process="test/4/0004")  # nothing of its own in memory
        assert await other.totals(since=since) == {
            "received": 2,
            "verified": 0,
            "rejected": {"no_credential": 1},
            "duplicates": 0,
        }
    finally:
        await tallies.aclose()
        await db.aclose()
