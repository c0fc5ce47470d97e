"""The console's API with a million ledger rows: `python -m bench.console_bench [--rows N]
[--backend sqlite|postgres|both] [--postgres-url URL] [--repeat K]`.

A benchmark, not a test. For each backend it fills a fresh ledger (migrated by Alembic, so the
console's indexes, and the triggers that keep the hourly usage totals as rows are inserted, are
the shipped ones) with N calls (default 1,000,000) spread over 90 days,
2,000 identities, 6 profiles and 20 tenants, plus 200 live calls, a tenth as many webhook
events, an outbox backlog and 5,000 audit rows; then starts the real proxy app on loopback and
times each console request over real HTTP (the first answer is a warm-up and not counted; then
`--repeat` timed answers, default 5): median and worst wall time against the 300 ms goal.
PostgreSQL: a database of its own under the server named by `--postgres-url` (default
`$VAPI_PROXY_TEST_POSTGRES_URL`), dropped at the end; loaded with COPY, then VACUUM ANALYZE as
autovacuum would. SQLite is left as the proxy leaves it (no ANALYZE).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import SecretStr

from vapi_proxy.app import create_app
from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.ledger.store import Ledger
from vapi_proxy.settings import Secrets, parse_settings
from vapi_proxy.testing import ServerThread

GOAL_MS = 300.0
DAYS = 90
IDENTITIES = 2_000
PROFILES = [f"profile-{i}" for i in range(6)]
TENANTS = [f"tenant-{i}" for i in range(20)]
LIVE = 200
EVENTS_PER_CALL = 0.1  # 100,000 webhook events for a million calls
OUTBOX = 2_000
AUDIT = 5_000
CALL_COLUMNS = [
    "id", "kind", "identity_key", "identity_hash", "auth_method", "tenant", "profile",
    "request_id", "created_at", "status", "started_at", "ended_at", "ended_reason",
    "duration_seconds", "cost_usd", "max_duration_seconds", "reservation_id", "updated_at",
    "control_url",
]  # fmt: skip


def _calls(rows: int, now: datetime, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(seed)
    span = DAYS * 86400
    for i in range(rows):
        live = i < LIVE
        created = now - timedelta(seconds=rng.random() * (600 if live else span))
        user = min(int(rng.paretovariate(1.2)) - 1, IDENTITIES - 1)  # a few heavy users
        duration = None if live else rng.uniform(5, 900)
        kind = "chat" if rng.random() < 0.1 else "web"
        yield (
            f"bench-{i:08d}-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}",
            kind,
            f"api_key:user{user}",
            f"{user:032x}",
            "api_key",
            TENANTS[user % len(TENANTS)],
            PROFILES[user % len(PROFILES)],
            None,
            created,
            "in-progress" if live else "ended",
            created,
            None if live else created + timedelta(seconds=duration or 0),
            None if live else "customer-ended-call",
            duration,
            None if live else round((duration or 0) / 60 * 0.1, 4),
            900.0,
            None,
            created,
            f"https://control.invalid/{i}/control" if live else None,
        )


def _sqlite_text(value: Any) -> Any:
    # SQLAlchemy's SQLite storage format for our UTC DateTime columns: naive, space, microseconds.
    if isinstance(value, datetime):
        return (
            value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        )
    return value


def _extra_rows(now: datetime, calls: int) -> dict[str, list[tuple[Any, ...]]]:
    rng = random.Random(11)
    events = [
        (f"bench-{rng.randrange(10**6):08d}", rng.choice(["status-update", "end-of-call-report",
         "conversation-update", "transcript"]), "ended", now - timedelta(seconds=rng.random() *
         DAYS * 86400), f"dedupe-{i}", True, None)
        for i in range(int(calls * EVENTS_PER_CALL))
    ]  # fmt: skip
    outbox = [
        (f"ev{i}", "https://app.invalid/hooks", "status-update", b"{}",
         now - timedelta(seconds=OUTBOX - i), 1, now, "pending" if i % 10 else "delivered",
         None, None)
        for i in range(OUTBOX)
    ]  # fmt: skip
    audit = [
        (now - timedelta(seconds=AUDIT - i), f"key:{i % 3:012x}", "block", f"api_key:user{i}",
         "ok", "127.0.0.1", None, None)
        for i in range(AUDIT)
    ]  # fmt: skip
    return {"call_events": events, "webhook_outbox": outbox, "admin_audit": audit}


EXTRA_COLUMNS = {
    "call_events": ["call_id", "type", "status", "received_at", "dedupe_key", "known", "payload"],
    "webhook_outbox": ["event_id", "target", "type", "body", "created_at", "attempts",
                       "next_attempt_at", "state", "last_error", "delivered_at"],
    "admin_audit": ["at", "actor", "action", "target", "outcome", "client", "request_id",
                    "detail"],
}  # fmt: skip


async def _migrate(url: str) -> None:
    ledger = Ledger.from_url(url)
    await ledger.start(auto_migrate=True)
    await ledger.aclose()


def _fill_sqlite(path: str, rows: int, now: datetime) -> None:
    conn = sqlite3.connect(path)
    try:
        marks = ",".join("?" * len(CALL_COLUMNS))
        batch: list[tuple[Any, ...]] = []
        sql = f"INSERT INTO calls ({','.join(CALL_COLUMNS)}) VALUES ({marks})"  # noqa: S608
        for row in _calls(rows, now):
            batch.append(tuple(_sqlite_text(v) for v in row))
            if len(batch) == 20_000:
                conn.executemany(sql, batch)
                batch.clear()
        conn.executemany(sql, batch)
        for table, values in _extra_rows(now, rows).items():
            columns = EXTRA_COLUMNS[table]
            conn.executemany(
                f"INSERT INTO {table} ({','.join(columns)}) "  # noqa: S608
                f"VALUES ({','.join('?' * len(columns))})",
                [tuple(_sqlite_text(v) for v in row) for row in values],
            )
        conn.commit()
    finally:
        conn.close()


async def _fill_postgres(url: str, rows: int, now: datetime) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url, timeout=30)
    try:
        batch: list[tuple[Any, ...]] = []
        for row in _calls(rows, now):
            batch.append(row)
            if len(batch) == 50_000:
                await conn.copy_records_to_table("calls", records=batch, columns=CALL_COLUMNS)
                batch.clear()
        await conn.copy_records_to_table("calls", records=batch, columns=CALL_COLUMNS)
        for table, values in _extra_rows(now, rows).items():
            await conn.copy_records_to_table(table, records=values, columns=EXTRA_COLUMNS[table])
        # What autovacuum does on its own after a bulk load: statistics, and the visibility map
        # that lets the usage index answer without reading the table.
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _postgres_database(server_url: str) -> AsyncIterator[str]:
    import asyncpg

    name = f"vapi_proxy_console_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = server_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(server_url, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def _requests(now: datetime) -> list[tuple[str, str, dict[str, str]]]:
    def ago(**delta: float) -> str:
        return (now - timedelta(**delta)).isoformat()

    return [
        ("usage, last 7 days (default)", "/admin/api/usage", {}),
        ("usage, last 24 h per hour", "/admin/api/usage", {"since": ago(hours=24)}),
        ("usage, 30 days per day", "/admin/api/usage", {"since": ago(days=30)}),
        ("usage, 90 days per day (all rows)", "/admin/api/usage", {"since": ago(days=91)}),
        ("usage, 30 days, one profile", "/admin/api/usage",
         {"since": ago(days=30), "profile": PROFILES[2]}),
        ("usage, 30 days, one tenant", "/admin/api/usage",
         {"since": ago(days=30), "tenant": TENANTS[3]}),
        ("usage, 90 days, one identity", "/admin/api/usage",
         {"since": ago(days=91), "identity": "api_key:user5"}),
        ("usage CSV, 7 days", "/admin/api/usage.csv", {}),
        ("live calls", "/admin/api/calls/live", {}),
        ("webhook health, 24 h", "/admin/api/webhooks", {}),
        ("audit, newest 100", "/admin/api/audit", {}),
        ("blocks", "/admin/api/blocks", {}),
    ]  # fmt: skip


def _measure(
    url: str, admin_key: str, now: datetime, repeat: int
) -> list[tuple[str, float, float, str]]:
    """(name, median ms, worst ms, failure) per request; a refused request is reported, not
    raised, so one slow query does not hide the others."""
    results = []
    with httpx.Client(base_url=url, timeout=120) as client:
        client.headers["Authorization"] = f"Bearer {admin_key}"
        for name, path, params in _requests(now):
            times = []
            failure = ""
            for attempt in range(repeat + 1):
                started = time.perf_counter()
                reply = client.get(path, params=params)
                elapsed = (time.perf_counter() - started) * 1000
                if reply.status_code != 200:
                    failure = f"HTTP {reply.status_code}: {reply.json().get('message')}"
                    break
                if attempt:  # the first answer is the warm-up
                    times.append(elapsed)
            if failure or not times:
                results.append((name, float("nan"), float("nan"), failure))
            else:
                results.append((name, statistics.median(times), max(times), ""))
    return results


def _serve(ledger_url: str, admin_key: str) -> ServerThread:
    settings = parse_settings(
        {
            "vapi": {"base_url": "http://127.0.0.1:9"},  # never called by the console's reads
            "logging": {"access_log": False},
            "ledger": {"url": ledger_url},
            "limits": {"rules": [{"name": "everyone", "quota": {"per_day": 100}}]},
            "profiles": {name: {"assistant_id": name} for name in PROFILES},
            "admin": {"key_hashes": [hash_key(admin_key)], "reads_per_minute": 100_000},
        },
        environ={},
    )
    app = create_app(settings, Secrets(vapi_api_key=SecretStr("bench-dummy-key")))
    return ServerThread(app, startup_timeout=60).start()


def _report(
    backend: str, rows: int, fill_s: float, results: list[tuple[str, float, float, str]]
) -> bool:
    events = int(rows * EVENTS_PER_CALL)
    print(f"\n{backend}: {rows:,} calls (+{events:,} events), filled in {fill_s:.0f} s")
    print(f"  {'request':40} {'median ms':>10} {'worst ms':>10}  goal {GOAL_MS:.0f} ms")
    ok = True
    for name, median, worst, failure in results:
        met = not failure and worst <= GOAL_MS
        ok &= met
        verdict = failure or ("ok" if met else "MISSED")
        print(f"  {name:40} {median:10.1f} {worst:10.1f}  {verdict}", flush=True)
    return ok


async def _run_backend(backend: str, args: argparse.Namespace) -> bool:
    now = datetime.now(UTC)
    admin_key = generate_key()
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="console-bench-") as folder:
            url = f"sqlite:///{folder}/ledger.db"
            await _migrate(url)
            started = time.perf_counter()
            _fill_sqlite(f"{folder}/ledger.db", args.rows, now)
            fill = time.perf_counter() - started
            server = await asyncio.to_thread(_serve, url, admin_key)
            try:
                results = await asyncio.to_thread(_measure, server.url, admin_key, now, args.repeat)
            finally:
                await asyncio.to_thread(server.stop)
            return _report(backend, args.rows, fill, results)
    async with _postgres_database(args.postgres_url) as url:
        await _migrate(url)
        started = time.perf_counter()
        await _fill_postgres(url, args.rows, now)
        fill = time.perf_counter() - started
        server = await asyncio.to_thread(_serve, url, admin_key)
        try:
            results = await asyncio.to_thread(_measure, server.url, admin_key, now, args.repeat)
        finally:
            await asyncio.to_thread(server.stop)
        return _report(backend, args.rows, fill, results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console_bench")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("VAPI_PROXY_TEST_POSTGRES_URL", "")
    )
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if args.rows < LIVE or not 1 <= args.repeat <= 100:
        parser.error(f"--rows must be at least {LIVE}, --repeat 1 to 100")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if "postgres" in backends and not args.postgres_url:
        parser.error("PostgreSQL needs --postgres-url or $VAPI_PROXY_TEST_POSTGRES_URL")
    ok = True
    for backend in backends:
        ok &= asyncio.run(_run_backend(backend, args))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
