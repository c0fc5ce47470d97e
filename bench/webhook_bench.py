"""Verified webhook ingestion: `status-update`s per second through HMAC check, dedupe and the
SQLite ledger write, one uvicorn worker on loopback (bounded: `--seconds` of load, default 4,
at most 10).

    .venv/bin/python -m bench.webhook_bench [--seconds 4] [--concurrency 32] [--calls 2000]
                                            [--profile /tmp/webhook.folded]

The proxy runs in its own process (uvicorn, uvloop, httptools; pinned to one CPU when there are
two), with a ledger already holding `--calls` calls. The Python load generator (aiohttp, pinned
to another CPU) sends pre-signed deliveries, each a distinct event (its own timestamp) for one of
those calls, so every request is verified, deduplicated (a miss) and written. Goals: ≥ 1,500/s,
and (issue 17) at most 0.25 ms of the proxy's CPU per event.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import cpu_count, free_port, pinned, sample, wait_port  # noqa: E402

GOAL = 1500.0
CPU_GOAL_MS = 0.25  # issue 17: ms of proxy CPU per verified, deduplicated, recorded event
STATUSES = ("ringing", "in-progress")


async def _seed(url: str, calls: int) -> list[str]:
    """A migrated ledger holding `calls` calls, written in one transaction."""
    from datetime import UTC, datetime

    from vapi_proxy.ledger.schema import calls as calls_table
    from vapi_proxy.ledger.store import Ledger

    ledger = Ledger.from_url(url)
    await ledger.start(auto_migrate=True)
    ids = [f"bench-call-{i:06d}" for i in range(calls)]
    now = datetime.now(UTC)
    rows = [
        {
            "id": call_id,
            "kind": "web",
            "identity_key": "api_key:bench",
            "identity_hash": "0" * 16,
            "auth_method": "api_key",
            "profile": "bench",
            "created_at": now,
            "status": "queued",
            "updated_at": now,
        }
        for call_id in ids
    ]
    try:
        async with ledger.database.write() as conn:
            await conn.execute(calls_table.insert(), rows)
    finally:
        await ledger.aclose()
    return ids


def _deliveries(
    secret: bytes, call_ids: list[str], count: int
) -> list[tuple[bytes, dict[str, str]]]:
    stamp = str(int(time.time()))
    base_ms = int(time.time() * 1000)
    out = []
    for i in range(count):
        message = {
            "type": "status-update",
            "status": STATUSES[i % len(STATUSES)],
            "timestamp": base_ms + i,
            "call": {"id": call_ids[i % len(call_ids)], "type": "webCall"},
        }
        body = orjson.dumps({"message": message})
        mac = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        out.append(
            (
                body,
                {
                    "content-type": "application/json",
                    "x-signature": mac,
                    "x-timestamp": stamp,
                },
            )
        )
    return out


async def _load(
    url: str, work: list[tuple[bytes, dict[str, str]]], seconds: float, concurrency: int
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    position = 0
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal position
            while position < len(work) and time.perf_counter() < stop_at:
                body, headers = work[position]
                position += 1
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    key = str(resp.status)
                    statuses[key] = statuses.get(key, 0) + 1
                latencies.append((time.perf_counter() - started) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))], 2)

    ok = statuses.get("200", 0)
    return {
        "events": ok,
        "seconds": round(elapsed, 3),
        "events_per_second": round(ok / elapsed, 1),
        "statuses": statuses,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def main(
    seconds: float = 4.0, concurrency: int = 32, calls: int = 2000, profile: str | None = None
) -> dict[str, Any]:
    seconds = min(seconds, 10.0)
    secret = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{tmp}/ledger.db"
        call_ids = asyncio.run(_seed(db_url, calls))
        config = {
            "ledger": {"url": db_url, "auto_migrate": False},  # seeded at head already
            "logging": {"access_log": False, "level": "warning"},
            # limits.backend left at the default (ledger://): what a deployment runs
            "webhooks": {"verify": [{"type": "hmac", "secret_env": "BENCH_WEBHOOK_SECRET"}]},
        }
        config_path = Path(tmp) / "proxy.yaml"
        config_path.write_text(yaml.safe_dump(config))
        port = free_port()
        env = {
            **os.environ,
            "VAPI_PROXY_CONFIG": str(config_path),
            "VAPI_API_KEY": "bench-not-used",
            "BENCH_WEBHOOK_SECRET": secret,
        }
        two = cpu_count() >= 2
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "vapi_proxy.app:app_from_environment",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        if profile:
            # py-spy samples the proxy for the whole run; `--format raw` folds stacks for reading.
            spy = str(Path(sys.executable).parent / "py-spy")
            cmd = [spy, "record", "-o", profile, "--format", "raw", "--rate", "200", "--", *cmd]
        proc = subprocess.Popen(pinned(cmd, 0 if two else None), env=env, cwd=ROOT)
        try:
            # Signed while the proxy starts; more than the time allows (the clock ends the run).
            work = _deliveries(secret.encode(), call_ids, int(seconds * 2500) + 200)
            wait_port(port, proc=proc)
            if two:
                os.sched_setaffinity(0, {1})
            url = f"http://127.0.0.1:{port}/webhook"
            asyncio.run(_load(url, work[:200], 0.5, concurrency))  # warm-up (not counted)
            before = sample(proc.pid)
            result = _load(url, work[200:], seconds, concurrency)
            figures = asyncio.run(result)
            after = sample(proc.pid)
        finally:
            proc.send_signal(signal.SIGINT)  # lets py-spy write its profile
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    cpu = after.cpu_seconds - before.cpu_seconds
    figures.update(
        {
            "goal_events_per_second": GOAL,
            "met_goal": figures["events_per_second"] >= GOAL,
            "goal_cpu_ms_per_event": CPU_GOAL_MS,
            "met_cpu_goal": cpu * 1000 / max(1, figures["events"]) <= CPU_GOAL_MS,
            "proxy_cpu_seconds": round(cpu, 3),
            "proxy_cpu_ms_per_event": round(cpu * 1000 / max(1, figures["events"]), 3),
            "proxy_rss_mb": round(after.rss_kb / 1024, 1),
            "concurrency": concurrency,
            "pinned": two,
        }
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--profile", help="write a py-spy profile (folded stacks) here")
    args = parser.parse_args()
    figures = main(args.seconds, args.concurrency, args.calls, args.profile)
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
