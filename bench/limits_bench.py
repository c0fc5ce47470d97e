"""Reservations per second for each limits backend (bounded: `--seconds` per backend, default 2).

    .venv/bin/python bench/limits_bench.py [--seconds 2] [--concurrency 16] [--backends ...]

Each reservation checks a typical rule set (rate, daily quota, concurrency, minute budget) for
one of 100 identities. Two figures per backend: `reserve` alone, and the whole `cycle` a real call
makes (reserve, commit, settle: three store round trips). PostgreSQL and
Redis come from VAPI_PROXY_TEST_POSTGRES_URL / VAPI_PROXY_TEST_REDIS_URL or scripts/services.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from vapi_proxy.auth.identity import Identity
from vapi_proxy.limits import AdmissionRequest, LimitsSettings, create_limiter

ROOT = Path(__file__).resolve().parents[1]
RULES = [
    {
        "name": "bench",
        "rate": {"per_second": 1_000_000},
        "quota": {"per_day": 100_000_000},
        "concurrency": 100_000,
        "budget": {"minutes_per_day": 1e9},
    }
]


def service_urls() -> dict[str, str]:
    urls = {
        k: v
        for k in ("VAPI_PROXY_TEST_POSTGRES_URL", "VAPI_PROXY_TEST_REDIS_URL")
        if (v := os.environ.get(k))
    }
    if len(urls) < 2:
        out = subprocess.run(
            [str(ROOT / "scripts" / "services")], capture_output=True, text=True, check=True
        ).stdout
        for line in out.splitlines():
            name, _, value = line.partition("=")
            urls.setdefault(name, value)
    return urls


async def bench(url: str, seconds: float, concurrency: int, cycle: bool) -> tuple[int, float]:
    settings = LimitsSettings(backend=url, namespace=f"bench{uuid.uuid4().hex[:8]}", rules=RULES)
    limiter = create_limiter(settings)
    people = [Identity(subject=f"user{i}", method="jwt") for i in range(100)]
    done = 0
    try:
        await limiter.health()
        await limiter.reserve(AdmissionRequest(people[0], "p"))  # create tables, load scripts
        deadline = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal done
            i = w
            while time.perf_counter() < deadline:
                who = people[i % len(people)]
                i += concurrency
                r = await limiter.reserve(AdmissionRequest(who, "p", worst_case_seconds=60))
                if cycle:
                    call_id = f"{w}-{i}"
                    await limiter.commit(r, call_id)
                    await limiter.settle(call_id, duration_seconds=1.0, cost_usd=0.0)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await limiter.aclose()
    return done, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backends", nargs="*", default=["memory", "sqlite", "postgres", "redis"])
    args = parser.parse_args()
    urls = service_urls() if {"postgres", "redis"} & set(args.backends) else {}
    with tempfile.TemporaryDirectory() as tmp:
        targets = {
            "memory": "memory://",
            "sqlite": f"sqlite:///{tmp}/bench.db",
            "postgres": urls.get("VAPI_PROXY_TEST_POSTGRES_URL", ""),
            "redis": urls.get("VAPI_PROXY_TEST_REDIS_URL", ""),
        }
        print(f"concurrency {args.concurrency}, {args.seconds:g} s per figure")
        print(f"{'backend':<10} {'reserve/s':>10} {'cycle/s':>10}")
        for name in args.backends:
            rates = []
            for cycle in (False, True):
                n, elapsed = asyncio.run(
                    bench(targets[name], args.seconds, args.concurrency, cycle)
                )
                rates.append(n / elapsed)
            print(f"{name:<10} {rates[0]:>10.0f} {rates[1]:>10.0f}")


if __name__ == "__main__":
    main()
