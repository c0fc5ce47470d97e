"""Operating the real `vapi-proxy serve` process: drain on SIGTERM, reload on SIGHUP.

The proxy runs as a subprocess exactly as in production (supervisor + worker); the simulator
runs in this process on loopback.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.proxy import SAVED_ASSISTANT_ID
from tests.support.serving import serve_process
from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.cli import main
from vapi_proxy.sandbox import RunningSandbox, SandboxSettings, SeededAssistant, run_sandbox
from vapi_proxy.testing import free_port

STREAM_EVENTS_DELAY = 0.15


@pytest.fixture(scope="module")
def slow_chat_sandbox() -> Iterator[RunningSandbox]:
    settings = SandboxSettings(
        admin_enabled=True,
        assistants=[SeededAssistant(id=SAVED_ASSISTANT_ID, name="Coach")],
        chat={"reply_prefix": "You said: ", "chunk_chars": 4, "stream_delay_seconds": 0.15},
    )
    with run_sandbox(settings) as running:
        yield running


def config_for(tmp: Path, sandbox: RunningSandbox, key: str, **extra: Any) -> dict[str, Any]:
    return {
        "vapi": {"base_url": sandbox.url, "timeout_seconds": 10},
        "logging": {"access_log": False},
        "server": {"drain_seconds": 20},
        "auth": {
            "methods": [{"type": "api_key", "keys": [{"name": "ops", "hash": hash_key(key)}]}]
        },
        "ledger": {"url": f"sqlite:///{tmp / 'ledger.db'}"},
        "profiles": {"coach": {"assistant_id": SAVED_ASSISTANT_ID}},
        **extra,
    }


@contextmanager
def serve(config: Path, sandbox: RunningSandbox, pid_file: Path) -> Iterator[tuple[str, Any]]:
    with serve_process(config, sandbox, pid_file=pid_file) as served:
        yield served.url, served.process


def test_sigterm_lets_an_open_stream_finish_then_exits_0(
    slow_chat_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    key = generate_key()
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump(config_for(tmp_path, slow_chat_sandbox, key)))
    with serve(config, slow_chat_sandbox, tmp_path / "pid") as (url, process):
        events: list[str] = []
        started = threading.Event()
        errors: list[BaseException] = []

        def read_stream() -> None:
            try:
                with httpx.stream(
                    "POST",
                    url + "/chat",
                    json={"assistantId": "coach", "input": "x" * 40, "stream": True},
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=30,
                ) as reply:
                    assert reply.status_code == 200, reply.read()
                    for line in reply.iter_lines():
                        if line.startswith("data:"):
                            events.append(line)
                            started.set()
            except BaseException as exc:  # reported to the test thread below
                errors.append(exc)
                started.set()

        reader = threading.Thread(target=read_stream)
        reader.start()
        assert started.wait(20), "no event arrived"
        process.send_signal(signal.SIGTERM)
        reader.join(timeout=30)
        assert not errors, errors
        assert process.wait(timeout=30) == 0
    # "You said: " + 40 characters in chunks of 4, plus the closing [DONE]: all of it arrived.
    assert len(events) >= 12, events
    assert events[-1] == "data: [DONE]"


def test_reload_under_traffic_applies_a_valid_config_and_refuses_a_bad_one(
    slow_chat_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    key = generate_key()
    config = tmp_path / "proxy.yaml"
    raw = config_for(tmp_path, slow_chat_sandbox, key)
    config.write_text(yaml.safe_dump(raw))
    pid_file = tmp_path / "pid"
    headers = {"Authorization": f"Bearer {key}"}
    with serve(config, slow_chat_sandbox, pid_file) as (url, process):
        failures: list[str] = []
        count = 0
        stop = threading.Event()

        def traffic() -> None:
            nonlocal count
            with httpx.Client(timeout=15) as client:
                deadline = time.monotonic() + 60
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        reply = client.post(
                            url + "/call/web", json={"assistantId": "coach"}, headers=headers
                        )
                        if reply.status_code != 201:
                            failures.append(f"{reply.status_code} {reply.text[:200]}")
                    except httpx.TransportError as exc:
                        failures.append(repr(exc))
                    count += 1

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            time.sleep(0.5)
            # A valid change: a new profile appears without a restart of the service.
            raw["profiles"]["added"] = {"assistant_id": SAVED_ASSISTANT_ID}
            config.write_text(yaml.safe_dump(raw))
            assert main(["reload", "--pid-file", str(pid_file), "--config", str(config)]) == 0
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                added = httpx.post(
                    url + "/call/web", json={"assistantId": "added"}, headers=headers, timeout=10
                )
                if added.status_code == 201:
                    break
                time.sleep(0.2)
            assert added.status_code == 201, added.text
            # An invalid change is refused by the running supervisor too (sent directly).
            config.write_text("profiles: {broken: {}}\n")
            os.kill(int(pid_file.read_text()), signal.SIGHUP)
            time.sleep(2)
            still = httpx.post(
                url + "/call/web", json={"assistantId": "added"}, headers=headers, timeout=10
            )
            assert still.status_code == 201, still.text
        finally:
            stop.set()
            worker.join(timeout=30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert count > 5
    assert failures == [], failures[:5]
    log = "".join(p.read_text() for p in tmp_path.glob("proxy-*.log"))
    assert "reload refused" in log
    assert key not in log


def _refusals(text: str) -> tuple[float, float]:
    """(bad-key auth failures, 401 answers on /call/web) in one scrape."""
    auth = answered = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vapi_proxy_auth_total" and sample.labels == {
                "result": "failure",
                "reason": "bad_api_key",
            }:
                auth += sample.value
            elif (
                sample.name == "vapi_proxy_requests_total"
                and sample.labels.get("route") == "/call/web"
                and sample.labels.get("status") == "401"
            ):
                answered += sample.value
    return auth, answered


@pytest.mark.parametrize(
    ("workers", "own_port"),
    [
        pytest.param(2, False, id="two-workers-main-port"),
        pytest.param(2, True, id="two-workers-metrics-port"),
        pytest.param(1, False, id="one-worker"),
    ],
)
def test_every_event_counts_once_on_every_scrape_across_workers_and_reloads(
    slow_chat_sandbox: RunningSandbox, tmp_path: Path, workers: int, own_port: bool
) -> None:
    # Issue 13 §11: with two workers 6 bad keys read 2, 2, 2, 6 on successive scrapes (each
    # worker folded its own counts in only when it served a scrape), and a reload lost them.
    key = generate_key()
    metrics_port = free_port() if own_port else None
    raw = config_for(tmp_path, slow_chat_sandbox, key)
    if metrics_port is not None:
        raw["metrics"] = {"port": metrics_port}
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump(raw))
    pid_file = tmp_path / "pid"
    temp = tmp_path / "tmp"  # where serve makes its metrics folder (PROMETHEUS_MULTIPROC_DIR)
    temp.mkdir()
    environ = {"TMPDIR": str(temp), "PROMETHEUS_MULTIPROC_DIR": ""}
    with serve_process(
        config, slow_chat_sandbox, workers=workers, pid_file=pid_file, env=environ
    ) as served:
        assert len(list(temp.glob("vapi-proxy-metrics-*"))) == 1
        scrape_url = (
            f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else served.url + "/metrics"
        )

        def scrapes(count: int = 8) -> list[tuple[float, float]]:
            # A fresh connection each time, so the scrapes land on every worker. Each is sent
            # after the replies were read: the requests must already be counted.
            return [_refusals(httpx.get(scrape_url, timeout=10).text) for _ in range(count)]

        def bad_keys(count: int) -> None:
            for _ in range(count):
                reply = httpx.post(
                    served.url + "/call/web",
                    json={"assistantId": "coach"},
                    headers={"Authorization": f"Bearer {generate_key()}"},
                    timeout=10,
                )
                assert reply.status_code == 401, reply.text

        bad_keys(6)
        assert scrapes() == [(6.0, 6.0)] * 8
        assert main(["reload", "--pid-file", str(pid_file), "--config", str(config)]) == 0
        assert scrapes() == [(6.0, 6.0)] * 8
        bad_keys(3)
        assert scrapes() == [(9.0, 9.0)] * 8
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=30) == 0
    # The folder serve made for the workers' metric files goes with it.
    assert list(temp.glob("vapi-proxy-metrics-*")) == []
