"""PostgreSQL and Redis for the limits and ledger tests: from the environment or scripts/services.

`VAPI_PROXY_TEST_POSTGRES_URL` and `VAPI_PROXY_TEST_REDIS_URL` win when set; otherwise
`scripts/services` is run once per session to start both on loopback. No server means a loud
failure, never a silent skip: a green run must have exercised every backend.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PG_ENV = "VAPI_PROXY_TEST_POSTGRES_URL"
REDIS_ENV = "VAPI_PROXY_TEST_REDIS_URL"

_cache: dict[str, str] = {}


def service_urls() -> dict[str, str]:
    """Both URLs, starting the services at most once per process."""
    if _cache:
        return _cache
    urls = {k: os.environ[k] for k in (PG_ENV, REDIS_ENV) if os.environ.get(k)}
    if len(urls) < 2:
        try:
            out = subprocess.run(
                [str(ROOT / "scripts" / "services")],
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            ).stdout
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            pytest.fail(f"scripts/services could not start PostgreSQL/Redis: {exc}\n{detail}")
        for line in out.splitlines():
            name, sep, value = line.partition("=")
            if sep and name in (PG_ENV, REDIS_ENV):
                urls.setdefault(name, value.strip())
    for name in (PG_ENV, REDIS_ENV):
        if name not in urls:
            pytest.fail(f"no {name}: set it or make scripts/services print it")
        host = urls[name].split("@")[-1].split("//")[-1]
        if not host.startswith("127.0.0.1"):
            pytest.fail(f"{name} must point at 127.0.0.1, not {urls[name]!r}")
    _cache.update(urls)
    return _cache


def postgres_url() -> str:
    return service_urls()[PG_ENV]


def redis_url() -> str:
    return service_urls()[REDIS_ENV]


@asynccontextmanager
async def fresh_postgres_database(*, default_isolation: str | None = None) -> AsyncIterator[str]:
    """A new empty database on the test server, dropped afterwards. `default_isolation`
    (e.g. `repeatable read`): the database's `default_transaction_isolation`, for code that
    must hold whatever the server's default is."""
    import asyncpg

    base = postgres_url()
    name = f"vp_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = base
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        if default_isolation is not None:
            await conn.execute(
                f'ALTER DATABASE "{name}" SET default_transaction_isolation = '
                f"'{default_isolation}'"
            )
    finally:
        await conn.close()
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def closed_port() -> int:
    """A loopback port with nothing listening (bound and released a moment ago)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
