"""Limits that hold across processes: a burst through several proxy processes sharing state.

Two `vapi-proxy serve` processes on Redis + PostgreSQL, and one process with two workers on
SQLite, each take 200 simultaneous requests from one identity with concurrency 3 and quota 50:
never more than 3 live, never more than 50 admitted, every refusal a clean 429, every admitted
call in the ledger exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import yaml
from pydantic import SecretStr

from tests.support.proxy import SAVED_ASSISTANT_ID
from tests.support.services import fresh_postgres_database, redis_url
from tests.support.serving import serve_process
from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.ledger.store import Ledger
from vapi_proxy.sandbox import (
    BearerCredential,
    RunningSandbox,
    SandboxSettings,
    SeededAssistant,
    run_sandbox,
)
from vapi_proxy.testing import free_port

BURST = 200
CONCURRENCY = 3
QUOTA = 50


@pytest.fixture(scope="module")
def slow_sandbox() -> Iterator[RunningSandbox]:
    """Calls stay live long enough for the burst to contend for the 3 slots."""
    settings = SandboxSettings(
        admin_enabled=True,
        assistants=[SeededAssistant(id=SAVED_ASSISTANT_ID, name="Coach")],
    )
    with run_sandbox(settings) as running:
        yield running


def write_config(folder: Path, sandbox: RunningSandbox, key: str, limits: str, ledger: str) -> Path:
    config = {
        "vapi": {"base_url": sandbox.url, "timeout_seconds": 10},
        "logging": {"access_log": False, "level": "warning"},
        "auth": {
            "methods": [{"type": "api_key", "keys": [{"name": "burst", "hash": hash_key(key)}]}]
        },
        "limits": {
            "backend": limits,
            "namespace": f"burst-{time.monotonic_ns()}",
            "rules": [
                {"name": "live", "concurrency": CONCURRENCY},
                {"name": "daily", "quota": {"per_day": QUOTA}},
            ],
        },
        "ledger": {"url": ledger},
        "profiles": {"coach": {"assistant_id": SAVED_ASSISTANT_ID}},
    }
    path = folder / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def serve(
    config: Path,
    sandbox: RunningSandbox,
    *,
    workers: int = 1,
    port: int | None = None,
    env: dict[str, str] | None = None,
    pids: list[int] | None = None,
) -> Iterator[str]:
    with serve_process(config, sandbox, workers=workers, port=port, env=env) as served:
        if pids is not None:
            pids.append(served.process.pid)
        yield served.url


async def burst(urls: list[str], key: str) -> list[tuple[int, dict[str, Any]]]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=BURST)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(i: int) -> tuple[int, dict[str, Any]]:
            async with session.post(
                urls[i % len(urls)] + "/call/web", data=b'{"assistantId":"coach"}', headers=headers
            ) as reply:
                return reply.status, await reply.json(content_type=None)

        return await asyncio.gather(*(one(i) for i in range(BURST)))


def check_burst(results: list[tuple[int, dict[str, Any]]], sandbox: RunningSandbox) -> list[str]:
    statuses = [status for status, _ in results]
    admitted = [body["id"] for status, body in results if status == 201]
    assert set(statuses) <= {201, 429}, sorted(set(statuses))
    for status, body in results:
        if status == 429:
            assert set(body) == {"message", "error", "statusCode", "requestId"}
            assert body["statusCode"] == 429
    # The simulator's calls stay live for its lifecycle duration (longer than the burst), so
    # the concurrency cap of 3 is the binding limit here.
    assert 1 <= len(admitted) <= CONCURRENCY, statuses
    assert len(set(admitted)) == len(admitted)
    return admitted


async def ledger_ids(url: str, ids: list[str]) -> list[str]:
    ledger = Ledger.from_url(url)
    await ledger.start(auto_migrate=False)
    try:
        found = [await ledger.get_call(call_id) for call_id in ids]
        rows = await ledger.list_calls("api_key:burst", limit=1000)
    finally:
        await ledger.aclose()
    assert all(found)
    return [row.id for row in rows]


def test_two_processes_on_redis_and_postgres(slow_sandbox: RunningSandbox, tmp_path: Path) -> None:
    key = generate_key()

    async def run() -> None:
        async with fresh_postgres_database() as database:
            config = write_config(tmp_path, slow_sandbox, key, redis_url(), database)
            with serve(config, slow_sandbox) as first, serve(config, slow_sandbox) as second:
                results = await burst([first, second], key)
            admitted = check_burst(results, slow_sandbox)
            rows = await ledger_ids(database, admitted)
            assert sorted(rows) == sorted(admitted)

    asyncio.run(run())


def test_one_process_two_workers_on_sqlite(slow_sandbox: RunningSandbox, tmp_path: Path) -> None:
    key = generate_key()
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    config = write_config(
        tmp_path, slow_sandbox, key, f"sqlite:///{tmp_path / 'limits.db'}", database
    )
    with serve(config, slow_sandbox, workers=2) as url:
        results = asyncio.run(burst([url], key))
    admitted = check_burst(results, slow_sandbox)
    rows = asyncio.run(ledger_ids(database, admitted))
    assert sorted(rows) == sorted(admitted)


def test_quota_holds_across_processes(slow_sandbox: RunningSandbox, tmp_path: Path) -> None:
    """With no concurrency cap, the quota of 50 is what binds: exactly 50 of 200 admitted."""
    key = generate_key()

    async def run() -> None:
        async with fresh_postgres_database() as database:
            config = write_config(tmp_path, slow_sandbox, key, redis_url(), database)
            raw = yaml.safe_load(config.read_text())
            raw["limits"]["rules"] = [{"name": "daily", "quota": {"per_day": QUOTA}}]
            config.write_text(yaml.safe_dump(raw))
            with serve(config, slow_sandbox) as first, serve(config, slow_sandbox) as second:
                results = await burst([first, second], key)
            statuses = [status for status, _ in results]
            assert statuses.count(201) == QUOTA, sorted(set(statuses))
            assert statuses.count(429) == BURST - QUOTA
            admitted = [body["id"] for status, body in results if status == 201]
            rows = await ledger_ids(database, admitted)
            assert sorted(rows) == sorted(admitted)

    asyncio.run(run())


def test_killing_a_proxy_mid_burst_loses_no_ledger_row(tmp_path: Path) -> None:
    """SIGKILL one of two proxies (its whole process tree) while it is creating calls: every
    call Vapi created still ends up in the shared ledger, through the survivor's webhooks
    (the call's metadata names the proxy's attribution, which adopts it)."""
    token = generate_key()
    settings = SandboxSettings(
        admin_enabled=True,
        assistants=[SeededAssistant(id=SAVED_ASSISTANT_ID, name="Coach")],
        credentials=[BearerCredential(id="hook", type="bearer", token=SecretStr(token))],
        lifecycle={"in_progress_after": 0.2, "duration": 60},
    )
    key = generate_key()
    survivor_port = free_port()

    async def run(sandbox: RunningSandbox) -> None:
        async with fresh_postgres_database() as database:
            config = write_config(tmp_path, sandbox, key, redis_url(), database)
            raw = yaml.safe_load(config.read_text())
            raw["limits"]["rules"] = [{"name": "daily", "quota": {"per_day": 1000}}]
            raw["public_url"] = f"http://127.0.0.1:{survivor_port}"
            raw["webhooks"] = {
                "vapi_credential_id": "hook",
                "verify": [{"type": "bearer", "secret_env": ["BURST_HOOK_TOKEN"]}],
            }
            config.write_text(yaml.safe_dump(raw))
            env = {"BURST_HOOK_TOKEN": token}
            victims: list[int] = []
            with (
                serve(config, sandbox, port=survivor_port, env=env) as survivor,
                serve(config, sandbox, env=env, pids=victims) as victim,
            ):
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                # The caller has a history: one call recorded through the survivor.
                first = httpx.post(
                    survivor + "/call/web", content=b'{"assistantId":"coach"}', headers=headers
                )
                assert first.status_code == 201, first.text
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

                    async def one() -> int:
                        try:
                            async with http.post(
                                victim + "/call/web",
                                data=b'{"assistantId":"coach"}',
                                headers=headers,
                            ) as reply:
                                await reply.read()
                                return reply.status
                        except aiohttp.ClientError:
                            return -1

                    async def kill_soon() -> None:
                        # Let some calls through, then kill mid-burst.
                        deadline = time.monotonic() + 20
                        while len(list(sandbox.state.calls.newest_first())) < 16:
                            assert time.monotonic() < deadline, "no calls were created"
                            await asyncio.sleep(0.01)
                        os.killpg(victims[0], signal.SIGKILL)

                    results = await asyncio.gather(kill_soon(), *(one() for _ in range(BURST)))
                assert -1 in results[1:], "the kill did not interrupt the burst"
                created = [c.view(time.time())["id"] for c in sandbox.state.calls.newest_first()]
                assert created
                # Every created call reports to the survivor; wait until the ledger has all.
                deadline = time.monotonic() + 45
                missing = created
                while missing and time.monotonic() < deadline:
                    ledger = Ledger.from_url(database)
                    await ledger.start(auto_migrate=False)
                    try:
                        missing = [c for c in created if await ledger.get_call(c) is None]
                        owners = {
                            (await ledger.get_call(c)).identity_key  # type: ignore[union-attr]
                            for c in created
                            if c not in missing
                        }
                    finally:
                        await ledger.aclose()
                    if missing:
                        await asyncio.sleep(0.5)
                assert missing == [], f"{len(missing)} of {len(created)} calls have no ledger row"
                # Adopted calls go back to their owner: the identity has other recorded calls.
                assert owners == {"api_key:burst"}

    with run_sandbox(settings) as sandbox:
        asyncio.run(run(sandbox))
