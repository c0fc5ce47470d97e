"""PostgreSQL and Redis for the scaled-out variant, via `scripts/services`; a database of our
own for the ledger, dropped at the end; services stopped only if this run started them."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "services"
NAMESPACE_PREFIX = "vapi-proxy-bench-"  # setups gives each run's limits a namespace under it


def _status() -> str:
    out = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True, timeout=30)
    return out.stdout


async def _admin(url: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _forget_keys(url: str, pattern: str, most: int = 5_000_000) -> None:
    """Delete the bench's limit counters (bounded: at most `most` keys)."""
    from vapi_proxy.limits.resp import RespClient

    client = RespClient(url)
    try:
        cursor, seen = "0", 0
        while seen < most:
            cursor, keys = await client.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            if keys:
                await client.execute("DEL", *keys)
                seen += len(keys)
            if cursor == "0":
                break
    finally:
        await client.aclose()


@contextlib.contextmanager
def scaled_out() -> Iterator[tuple[dict[str, str], str]]:
    """Yields ({"postgres": url, "redis": url}, ledger url of a fresh database)."""
    were_up = _status().count(": up") == 2
    out = subprocess.run(
        [str(SCRIPT), "start"], capture_output=True, text=True, timeout=600, check=True
    )
    urls = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    pg = urls["VAPI_PROXY_TEST_POSTGRES_URL"]
    redis = urls["VAPI_PROXY_TEST_REDIS_URL"]
    name = f"vapi_proxy_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(pg, f'CREATE DATABASE "{name}"'))
    try:
        yield {"postgres": pg, "redis": redis}, pg.rsplit("/", 1)[0] + "/" + name
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(_admin(pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        with contextlib.suppress(Exception):
            # The Redis limiter wraps the namespace in braces (a cluster hash tag).
            asyncio.run(_forget_keys(redis, "{" + NAMESPACE_PREFIX + "*"))
        if not were_up:
            subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=60, check=False)
