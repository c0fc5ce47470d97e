"""Verified webhook ingestion: events per second through HMAC check, dedupe and the SQLite
ledger write, one uvicorn worker on loopback (bounded: `--seconds` of load, default 4, at most
10).

    .venv/bin/python -m bench.webhook_bench [--seconds 4] [--concurrency 32] [--calls 2000]
                                            [--mix status|lifecycle] [--replays 0.1]
                                            [--profile /tmp/webhook.folded]

The proxy runs in its own process (uvicorn, uvloop, httptools; pinned to one CPU when there are
two), with a ledger already holding `--calls` calls. The Python load generator (aiohttp, pinned
to another CPU) sends pre-signed deliveries built by the simulator's own message builders
(`vapi_proxy.sandbox.messages`: the whole Call object and assistant in every message, as Vapi
sends them). `--mix status` (the default, the figure the goals were set on): `status-update`s
only, each a distinct event for one of those calls. `--mix lifecycle`: each call's
`ringing`, `in-progress`, `ended` and `end-of-call-report` in turn, so half the events settle
the call's limits. `--replays F` resends a fraction F of deliveries byte for byte (Vapi's
retries), which must be answered and deduplicated, not recorded twice. Every request is
verified. Goals: ≥ 1,500/s, and (issue 17) at most 0.25 ms of the proxy's CPU per event.
`--profile` attaches py-spy to the proxy for the measured load only (not its start-up).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import signal
import sqlite3
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
LIFECYCLE = ("ringing", "in-progress", "ended", "end-of-call-report")
MIXES = ("status", "lifecycle")
EXPERIMENTS = ("no-ledger-write",)
_AGE = {"ringing": 1.5, "in-progress": 30.0, "ended": 62.0, "end-of-call-report": 63.0}
"""Seconds since the call's creation at which each step is sent (see `_record`'s timeline)."""


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


def _record(call_id: str, created: float) -> Any:
    """A simulator call record: a web call the proxy created (its attribution metadata on)."""
    from vapi_proxy.sandbox.calls import CallRecord, iso

    stamp = iso(created)
    snapshot = {
        "id": call_id,
        "orgId": "00000000-0000-4000-8000-0000000000b0",
        "createdAt": stamp,
        "updatedAt": stamp,
        "type": "webCall",
        "status": "queued",
        "cost": 0,
        "monitor": {
            "listenUrl": f"wss://127.0.0.1/{call_id}/listen",
            "controlUrl": f"http://127.0.0.1/{call_id}/control",
        },
        "assistantId": "bench-assistant",
        "assistantOverrides": {
            "variableValues": {"plan": "bench"},
            "metadata": {
                "vapiProxy": {"identity": "0" * 16, "profile": "bench", "requestId": "r" * 32}
            },
        },
        "webCallUrl": f"https://bench.daily.co/{call_id}",
    }
    assistant = {
        "name": "Bench assistant",
        "firstMessage": "Hello, this is the bench assistant.",
        "model": {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "You are a short-spoken bench. " * 8}],
        },
        "voice": {"provider": "vapi", "voiceId": "Elliot"},
        "transcriber": {"provider": "deepgram", "model": "nova-2", "language": "en"},
        "maxDurationSeconds": 600,
    }
    return CallRecord(
        id=call_id,
        created=created,
        snapshot=orjson.dumps(snapshot),
        timeline=[(created, "queued"), (created + 1, "ringing"), (created + 2, "in-progress")],
        natural_end=created + 62,
        natural_reason="customer-ended-call",
        cost_per_minute=0.1,
        assistant=assistant,
    )


def _messages(call_ids: list[str], count: int, mix: str) -> list[dict[str, Any]]:
    """`count` distinct events (each its own timestamp) from the simulator's builders."""
    from vapi_proxy.sandbox import messages

    base = time.time() - 3600
    out = []
    for i in range(count):
        if mix == "status":
            call_id, step = call_ids[i % len(call_ids)], STATUSES[i % len(STATUSES)]
        else:
            call_id = call_ids[(i // len(LIFECYCLE)) % len(call_ids)]
            step = LIFECYCLE[i % len(LIFECYCLE)]
        # A distinct millisecond per event (the timestamp is part of the dedupe key), at the
        # point of the call's life its step belongs to.
        at = base + i / 1000
        call = _record(call_id, at - _AGE[step])
        if step == "end-of-call-report":
            payload = messages.end_of_call_report(call, at)
        else:
            reason = "customer-ended-call" if step == "ended" else None
            payload = messages.status_update(call, step, reason, at)
        out.append(payload)
    return out


Delivery = tuple[bytes, dict[str, str], bool]
"""Body, headers, and whether it is a resend of an earlier delivery."""


def _deliveries(
    secret: bytes, call_ids: list[str], count: int, mix: str = "status", replays: float = 0.0
) -> list[Delivery]:
    stamp = str(int(time.time()))
    signed = []
    for payload in _messages(call_ids, count, mix):
        body = orjson.dumps(payload)
        mac = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers = {"content-type": "application/json", "x-signature": mac, "x-timestamp": stamp}
        signed.append((body, headers, False))
    if replays <= 0:
        return signed
    # Every 1/F-th delivery is followed, a few places later, by a byte-for-byte resend.
    every = max(1, round(1 / replays))
    out: list[Delivery] = []
    for i, delivery in enumerate(signed):
        out.append(delivery)
        if i % every == every - 1 and i >= 8:
            body, headers, _ = signed[i - 8]
            out.append((body, headers, True))
    return out


async def _load(
    url: str, work: list[Delivery], seconds: float, concurrency: int, answered: set[bytes]
) -> dict[str, Any]:
    """Sends `work` in order until it or the time runs out; the bodies answered 200 go into
    `answered`."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    resent = 0
    position = 0
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal position, resent
            while position < len(work) and time.perf_counter() < stop_at:
                body, headers, replay = work[position]
                position += 1
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    key = str(resp.status)
                    statuses[key] = statuses.get(key, 0) + 1
                    if resp.status == 200:
                        answered.add(body)
                        resent += replay
                latencies.append((time.perf_counter() - started) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))], 2)

    ok = statuses.get("200", 0) - resent  # a resend answered 200 is no new event
    return {
        "events": ok,
        "replays_answered": resent,
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "events_per_second": round(ok / elapsed, 1),
        "statuses": statuses,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def main(
    seconds: float = 4.0,
    concurrency: int = 32,
    calls: int = 2000,
    profile: str | None = None,
    mix: str = "status",
    replays: float = 0.0,
    experiment: str | None = None,
) -> dict[str, Any]:
    seconds = min(seconds, 10.0)
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {MIXES}")
    if experiment is not None and experiment not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {EXPERIMENTS}")
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
        # The experiment runs the same uvicorn command with the ledger write patched out.
        server = "bench.webhook_nowrite" if experiment == "no-ledger-write" else "uvicorn"
        cmd = [
            sys.executable,
            "-m",
            server,
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
        proc = subprocess.Popen(pinned(cmd, 0 if two else None), env=env, cwd=ROOT)
        spy: subprocess.Popen[bytes] | None = None
        try:
            # Signed while the proxy starts; more than the time allows (the clock ends the run).
            # 6,000/s: a quiet machine answered 3,600/s, and the run must end by the clock.
            work = _deliveries(secret.encode(), call_ids, int(seconds * 6000) + 200, mix, replays)
            wait_port(port, proc=proc)
            if two:
                os.sched_setaffinity(0, {1})
            url = f"http://127.0.0.1:{port}/webhook"
            answered: set[bytes] = set()
            asyncio.run(_load(url, work[:200], 0.5, concurrency, answered))  # warm-up
            if profile:
                # Attached for the measured load only; `--format raw` folds stacks for reading.
                # Its own CPU is not the proxy's: it is not a child of it.
                spy_cmd = [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(proc.pid),
                    "-o",
                    profile,
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--threads",
                ]
                spy = subprocess.Popen(pinned(spy_cmd, 1 if two else None))
                time.sleep(0.5)  # attached before the load starts
            before = sample(proc.pid)
            result = _load(url, work[200:], seconds, concurrency, answered)
            figures = asyncio.run(result)
            after = sample(proc.pid)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # detaches and writes the profile
                try:
                    spy.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Every distinct body answered 200 is one row: none lost, no resend recorded twice.
        with contextlib.closing(sqlite3.connect(f"{tmp}/ledger.db")) as db:
            rows = db.execute("SELECT count(*) FROM call_events").fetchone()[0]
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
            "ledger_events": rows,
            "ledger_events_match": rows == len(answered),
            "mix": mix,
            "replays": replays,
            "experiment": experiment,
            "pinned": two,
            "load_average": os.getloadavg()[0],
        }
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument(
        "--mix", choices=MIXES, default="status", help="status-updates only, or whole calls"
    )
    parser.add_argument(
        "--replays", type=float, default=0.0, help="fraction of deliveries resent byte for byte"
    )
    parser.add_argument("--profile", help="write a py-spy profile (folded stacks) here")
    parser.add_argument(
        "--experiment",
        choices=EXPERIMENTS,
        help="no-ledger-write: the ledger write patched out (bench/webhook_nowrite.py), to "
        "show its share; nothing is stored",
    )
    args = parser.parse_args()
    figures = main(
        args.seconds,
        args.concurrency,
        args.calls,
        args.profile,
        args.mix,
        args.replays,
        args.experiment,
    )
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
