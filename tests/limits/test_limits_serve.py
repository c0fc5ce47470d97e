"""The embedded default through the real `vapi-proxy serve`: a kill -9, a restart and a reload
each leave every count as it was, with calls in progress across them whose webhooks settle
afterwards; and two workers share the counts exactly."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import yaml
from pydantic import SecretStr

from tests.support.proxy import SAVED_ASSISTANT_ID
from tests.support.serving import serve_process
from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.sandbox import (
    BearerCredential,
    RunningSandbox,
    SandboxSettings,
    SeededAssistant,
    run_sandbox,
)
from vapi_proxy.testing import free_port

HOOK_TOKEN = generate_key()
CONCURRENCY = 2
QUOTA = 3


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    """Calls stay live until the test ends them; their webhooks carry a bearer token."""
    settings = SandboxSettings(
        admin_enabled=True,
        assistants=[SeededAssistant(id=SAVED_ASSISTANT_ID, name="Coach")],
        credentials=[BearerCredential(id="hook", type="bearer", token=SecretStr(HOOK_TOKEN))],
        lifecycle={"in_progress_after": 0.1, "duration": 3600},
    )
    with run_sandbox(settings) as running:
        yield running


def write_config(
    tmp: Path, sandbox: RunningSandbox, key: str, port: int, rules: list[dict[str, Any]]
) -> Path:
    config = {
        "vapi": {"base_url": sandbox.url, "timeout_seconds": 10},
        "logging": {"access_log": False, "level": "warning"},
        "server": {"drain_seconds": 5},
        "public_url": f"http://127.0.0.1:{port}",
        "auth": {
            "methods": [{"type": "api_key", "keys": [{"name": "dura", "hash": hash_key(key)}]}]
        },
        # No limits.backend: the default, counters kept in the ledger's SQLite file.
        "limits": {"rules": rules},
        "ledger": {"url": f"sqlite:///{tmp / 'ledger.db'}"},
        "webhooks": {
            "vapi_credential_id": "hook",
            "verify": [{"type": "bearer", "secret_env": ["DURABLE_HOOK_TOKEN"]}],
        },
        "profiles": {"coach": {"assistant_id": SAVED_ASSISTANT_ID, "max_duration_seconds": 600}},
    }
    path = tmp / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


RULES = [
    {"name": "live", "concurrency": CONCURRENCY},
    {"name": "daily", "quota": {"per_day": QUOTA}},
]
ENV = {"DURABLE_HOOK_TOKEN": HOOK_TOKEN}


def create(url: str, key: str) -> httpx.Response:
    return httpx.post(
        url + "/call/web",
        json={"assistantId": "coach"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=15,
    )


def end_and_wait_for_a_slot(sandbox: RunningSandbox, call_id: str, url: str, key: str) -> str:
    """End a call at the simulator (it sends the end-of-call webhooks to the proxy) and create
    the next call as soon as its slot is free (bounded); returns the new call's id."""
    admin = {"Authorization": f"Bearer {sandbox.settings.private_key.get_secret_value()}"}
    ended = httpx.post(f"{sandbox.url}/__sandbox/calls/{call_id}/end", headers=admin, timeout=10)
    assert ended.status_code == 200, ended.text
    deadline = time.monotonic() + 30
    while True:
        reply = create(url, key)
        if reply.status_code == 201:
            return str(reply.json()["id"])
        assert reply.status_code == 429, reply.text
        assert "in progress" in reply.json()["message"], reply.text  # only the slot may wait
        assert time.monotonic() < deadline, "the webhook never freed the slot"
        time.sleep(0.2)


def wait_reloaded(url: str, key: str) -> None:
    """The new workers serve the reloaded config: its marker profile answers 403 (a policy
    refusal, before any limit is touched) instead of 'no such profile'."""
    deadline = time.monotonic() + 60
    while True:
        reply = httpx.post(
            url + "/call/web",
            json={"assistantId": "marker"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        if reply.status_code == 403:
            return
        assert time.monotonic() < deadline, reply.text
        time.sleep(0.2)


@pytest.mark.parametrize("disruption", ["kill-9", "restart", "reload"])
def test_counts_survive(disruption: str, sandbox: RunningSandbox, tmp_path: Path) -> None:
    key = generate_key()
    port = free_port()
    config = write_config(tmp_path, sandbox, key, port, RULES)
    pid_file = tmp_path / "pid"

    def serve() -> Any:
        return serve_process(config, sandbox, port=port, env=ENV, pid_file=pid_file)

    with ExitStack() as stack:
        proxy = stack.enter_context(serve())
        first = create(proxy.url, key)
        second = create(proxy.url, key)
        assert (first.status_code, second.status_code) == (201, 201), second.text
        third = create(proxy.url, key)
        assert third.status_code == 429 and "2 calls in progress" in third.json()["message"]
        if disruption == "reload":  # the supervisor replaces its workers
            raw = yaml.safe_load(config.read_text())
            raw["profiles"]["marker"] = {
                "assistant_id": SAVED_ASSISTANT_ID,
                "access": {"methods": ["jwt"]},
            }
            config.write_text(yaml.safe_dump(raw))
            os.kill(int(pid_file.read_text()), signal.SIGHUP)
            wait_reloaded(proxy.url, key)
        else:
            if disruption == "kill-9":
                os.killpg(proxy.process.pid, signal.SIGKILL)
                proxy.process.wait(timeout=10)
            stack.close()  # a plain restart: SIGTERM, drained
            proxy = stack.enter_context(serve())
        # Both calls are still live: their slots were kept.
        refused = create(proxy.url, key)
        assert refused.status_code == 429, refused.text
        assert "2 calls in progress" in refused.json()["message"]
        # A call from before reports its end to the new process, which frees its slot.
        end_and_wait_for_a_slot(sandbox, first.json()["id"], proxy.url, key)
        # The daily quota kept the two calls from before: this fourth is one too many.
        end_and_wait_for_a_slot_or_quota(sandbox, second.json()["id"], proxy.url, key)


def end_and_wait_for_a_slot_or_quota(
    sandbox: RunningSandbox, call_id: str, url: str, key: str
) -> None:
    admin = {"Authorization": f"Bearer {sandbox.settings.private_key.get_secret_value()}"}
    ended = httpx.post(f"{sandbox.url}/__sandbox/calls/{call_id}/end", headers=admin, timeout=10)
    assert ended.status_code == 200, ended.text
    deadline = time.monotonic() + 30
    while True:
        reply = create(url, key)
        assert reply.status_code == 429, reply.text
        message = reply.json()["message"]
        if "for today" in message:
            assert message.startswith(f"You have used your {QUOTA} calls for today")
            return
        assert "in progress" in message, message
        assert time.monotonic() < deadline, "the webhook never freed the slot"
        time.sleep(0.2)


async def _burst(url: str, key: str, n: int) -> list[int]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=n)) as s:

        async def one() -> int:
            async with s.post(
                url + "/call/web", data=b'{"assistantId":"coach"}', headers=headers
            ) as r:
                await r.read()
                return r.status

        return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.parametrize(
    ("rules", "limit"),
    [
        ([{"name": "daily", "quota": {"per_day": 20}}], 20),
        ([{"name": "live", "concurrency": 7}], 7),
    ],
    ids=["quota", "concurrency"],
)
def test_two_workers_share_the_counts_exactly(
    rules: list[dict[str, Any]], limit: int, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Two workers, a 50-request burst from one caller: exactly the limit is admitted."""
    key = generate_key()
    port = free_port()
    config = write_config(tmp_path, sandbox, key, port, rules)
    with serve_process(config, sandbox, port=port, env=ENV, workers=2) as proxy:
        statuses = asyncio.run(_burst(proxy.url, key, 50))
    assert sorted(set(statuses)) == [201, 429], statuses
    assert statuses.count(201) == limit
