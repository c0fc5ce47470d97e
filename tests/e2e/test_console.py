"""The operator console as a person uses it: real Chromium against `vapi-proxy serve --sandbox`.

Sign in, see the plots of calls made through the proxy, filter, export CSV, watch a live call
(started by the real Web SDK) appear and end it from the page (the simulator's end-of-call
webhook follows and it leaves the list), block a user (their next `start()` fails with the
readable message in the Web SDK's error event), unblock them. Screenshots of each stage are
saved in the test's output folder.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.browser import (
    CHROMIUM_MAY_TRY,
    E2E_DIR,
    BrowserDriver,
    events_named,
    progress,
    start_in_page,
)
from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.testing import ServerThread, free_port

STEP_SECONDS = 15.0
BLOCK_MESSAGE = "This account is blocked: Payment overdue. Contact the service's operator."


class ConsoleBrowser:
    """`node console_driver.mjs`: one Chromium page driven one step at a time."""

    def __init__(self, stderr: Any) -> None:
        self._process = subprocess.Popen(
            ["node", str(E2E_DIR / "console_driver.mjs")],
            cwd=E2E_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        self._next = 0
        assert self._read(30.0) == {"ready": True}

    def _pump(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read(self, timeout: float) -> dict[str, Any]:
        line = self._lines.get(timeout=timeout)
        assert line is not None, "the console driver exited"
        result: dict[str, Any] = json.loads(line)
        return result

    def __call__(self, op: str, **args: Any) -> Any:
        self._next += 1
        timeout = args.setdefault("timeoutMs", int(STEP_SECONDS * 1000)) / 1000
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"id": self._next, "op": op, **args}) + "\n")
        self._process.stdin.flush()
        reply = self._read(timeout + 15)
        assert reply.get("id") == self._next, reply
        assert reply["ok"], f"{op} {args}: {reply.get('error')}"
        return reply.get("value")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self._process.stdin is not None
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)
        self._pump_thread.join(timeout=5)
        if self._process.stdout is not None:
            self._process.stdout.close()


@contextlib.contextmanager
def sandbox_proxy(folder: Path, config: dict[str, Any]) -> Iterator[str]:
    """`vapi-proxy serve --sandbox --config ...` as a subprocess; yields the proxy's URL."""
    path = folder / "proxy.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port, sandbox_port = free_port(), free_port()
    log = folder / "serve.log"
    command = [sys.executable, "-m", "vapi_proxy", "serve", "--sandbox", "--config", str(path)]
    command += ["--port", str(port), "--sandbox-port", str(sandbox_port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAPI_PROXY")}
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "serve --sandbox did not get ready"
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_an_operator_uses_the_console(
    browser: BrowserDriver,
    page_server: ServerThread,
    page_origin: str,
    tmp_path: Path,
) -> None:
    admin_key, alice, bob = generate_key(), generate_key(), generate_key()
    config = {
        "cors": {"allow_origins": [page_origin]},
        "logging": {"access_log": False},
        "auth": {
            "methods": [
                {
                    "type": "api_key",
                    "keys": [
                        {"name": "alice", "hash": hash_key(alice)},
                        {"name": "bob", "hash": hash_key(bob)},
                    ],
                }
            ]
        },
        "profiles": {
            "sales-coach": {"assistant_id": "3f1c2a7e-5b1d-4c8e-9a70-1b2c3d4e5f60"},
            "support": {"assistant_id": "6a1f0c2e-1111-4c8e-9a70-1b2c3d4e5f61"},
        },
        "limits": {"rules": [{"name": "everyone", "quota": {"per_day": 50}}]},
        "admin": {"key_hashes": [hash_key(admin_key)], "block_refresh_seconds": 1},
    }
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with (
        sandbox_proxy(tmp_path, config) as proxy,
        (tmp_path / "console-driver.log").open("w") as log,
    ):
        # Calls made through the proxy, as an app's servers would.
        for token, profile in [(alice, "sales-coach"), (alice, "support"), (bob, "support")]:
            made = httpx.post(
                proxy + "/call/web",
                json={"assistantId": profile},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert made.status_code == 201, made.text
        page = ConsoleBrowser(log)
        try:
            _drive(page, browser, page_server, proxy, admin_key, alice, shots)
        finally:
            report = page("report")
            page.close()
            (tmp_path / "console-report.json").write_text(json.dumps(report, indent=1))
    # The page asked nothing of any host but the proxy.
    hosts = {r["url"].split("/")[2] for r in report["requests"]}
    assert hosts == {proxy.split("/")[2]}, hosts
    assert {u.split("/")[2].split(":")[0] for u in report["refused"]} <= CHROMIUM_MAY_TRY
    # No script error and no CSP violation; the only failed loads are the refusals the test
    # provoked (not signed in yet: 401; the wrong key: 401).
    problems = [
        line
        for line in report["console"]
        if line.startswith("pageerror")
        or "Content Security Policy" in line
        or (line.startswith("error") and "status of 401" not in line)
    ]
    assert problems == [], report["console"]
    print(f"console screenshots: {shots}")


def _drive(
    page: ConsoleBrowser,
    browser: BrowserDriver,
    page_server: ServerThread,
    proxy: str,
    admin_key: str,
    alice: str,
    shots: Path,
) -> None:
    # Sign in.
    page("goto", url=proxy + "/admin")
    page("waitFor", sel="#sign-in")
    page("screenshot", path=str(shots / "1-sign-in.png"))
    page("fill", sel="#admin-key", value="not-the-key")
    page("click", sel="#sign-in-form button")
    page("waitFor", sel="#sign-in-error", text="not valid")
    page("fill", sel="#admin-key", value=admin_key)
    page("click", sel="#sign-in-form button")
    page("waitFor", sel="#console")
    assert page("cookieJar") == ""  # the session cookie is HttpOnly: no script can read it

    # The plots show the calls made through the proxy.
    page("waitFor", sel="#t-calls", text="3")
    heights = page("attr", sel="#chart-calls rect.bar", value="height")
    assert any(float(h) > 0 for h in heights), heights
    page("waitFor", sel="#top-users td", text="api_key:alice")
    page("waitFor", sel="#profiles td", text="support")
    page("screenshot", path=str(shots / "2-usage.png"))

    # Filter by identity, and export what is shown.
    page("fill", sel="#f-identity", value="api_key:bob")
    page("click", sel="#filters button[type=submit]")
    page("waitFor", sel="#t-calls", text="1")
    assert page("text", sel="#top-users td.ident") == ["api_key:bob"]
    exported = page("download", sel="#export")
    rows = list(csv.reader(io.StringIO(exported["text"])))
    assert rows[0] == ["t", "calls", "chats", "minutes", "costUsd"]
    assert sum(int(r[1]) for r in rows[1:]) == 1
    assert exported["name"].startswith("vapi-usage-series-")
    page("fill", sel="#f-identity", value="")
    page("click", sel="#filters button[type=submit]")
    page("waitFor", sel="#t-calls", text="3")

    # A live call started by the real Web SDK appears without a reload ...
    started = start_in_page(
        browser,
        page_server,
        proxy,
        token=alice,
        profile="sales-coach",
        form="string",
        until="daily-join",
    )
    assert ("daily-call-join", "started") in progress(started), progress(started)
    call_id = json.loads(started["replies"][0]["body"])["id"]
    row = f'#live tr[data-call="{call_id}"]'
    page("waitFor", sel=row)
    page("screenshot", path=str(shots / "3-live-call.png"))
    # ... and is ended from the page: Vapi's end-of-call webhook follows and it leaves the list.
    page("click", sel=f"{row} button")
    page("waitFor", sel="#notice", text="Asked Vapi to end the call")
    page("waitFor", sel=row, state="detached", timeoutMs=30000)
    audit = page("text", sel="#audit td")
    assert "end-call" in audit and call_id in audit

    # Block alice: her next start() is refused with the readable message.
    page("fill", sel="#b-identity", value="api_key:alice")
    page("fill", sel="#b-reason", value="Payment overdue")
    page("click", sel="#block-form button[type=submit]")
    page("waitFor", sel='#blocks tr[data-identity="api_key:alice"]')
    page("screenshot", path=str(shots / "4-blocked.png"))
    refused = start_in_page(
        browser, page_server, proxy, token=alice, profile="sales-coach", form="string"
    )
    [failed] = events_named(refused, "call-start-failed")
    assert failed["error"]["message"] == BLOCK_MESSAGE
    assert failed["error"]["statusCode"] == 403
    [error] = events_named(refused, "error")
    assert error["error"]["error"]["message"] == BLOCK_MESSAGE
    assert refused["status"] == BLOCK_MESSAGE  # what the example app shows its user

    # Unblock: she can start again.
    page("click", sel='#blocks tr[data-identity="api_key:alice"] button')
    page("waitFor", sel='#blocks tr[data-identity="api_key:alice"]', state="detached")
    page("waitFor", sel="#blocks-empty")
    again = start_in_page(
        browser,
        page_server,
        proxy,
        token=alice,
        profile="sales-coach",
        form="string",
        until="daily-join",
    )
    assert ("daily-call-join", "started") in progress(again)
    page("waitFor", sel="#audit td", text="unblock")
    page("screenshot", path=str(shots / "5-after.png"))
