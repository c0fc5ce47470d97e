"""Driving the example page in Chromium for the browser suite: where the build and Chromium are,
the driver that runs one page per case, the page's URL, starting a call in the page, and which
addresses off loopback a page or Chromium may try."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit

import pytest

from vapi_proxy.testing import ServerThread

E2E_DIR = Path(__file__).resolve().parents[1] / "e2e"
EXAMPLE_DIR = E2E_DIR.parents[1] / "examples" / "web"
BUNDLE = E2E_DIR / "build" / "app.js"
CHROMIUM = Path(os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium"))
SETUP_HINT = "run scripts/e2e-setup (installs Debian's chromium, npm ci, builds the bundle)"

# Bounds on every wait: a page whose start() never settles is reported, not waited on forever.
CASE_TIMEOUT_SECONDS = 15.0
DRIVER_GRACE_SECONDS = 15.0
DRIVER_START_SECONDS = 30.0


def require_setup(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(f"browser suite cannot run: {what}; {SETUP_HINT}", pytrace=False)


class BrowserDriver:
    """`node driver.mjs`: one Chromium for the session, one page per case.

    A driver that hangs or dies fails only the case it was running: it is killed, and the next
    case starts a fresh one, so one stuck page cannot take the rest of the suite down with it.
    """

    def __init__(self, stderr: TextIO) -> None:
        node = shutil.which("node")
        require_setup(node is not None, "node is not on PATH")
        assert node is not None
        self._node = node
        self._stderr = stderr
        self._process: subprocess.Popen[str] | None = None
        self._pump_thread: threading.Thread | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._next_id = 0
        self._start()

    def _start(self) -> None:
        self._process = subprocess.Popen(
            [self._node, str(E2E_DIR / "driver.mjs")],
            cwd=E2E_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "E2E_CHROMIUM": str(CHROMIUM)},
            # Its own process group, so a kill takes Chromium (node's child) down with it.
            start_new_session=True,
        )
        self._lines = queue.Queue()
        self._pump_thread = threading.Thread(
            target=self._pump, args=(self._process, self._lines), daemon=True
        )
        self._pump_thread.start()
        ready = self._read(DRIVER_START_SECONDS)
        if not ready.get("ready"):
            self.close(kill=True)
            pytest.fail(f"browser driver did not start: {ready}", pytrace=False)

    @staticmethod
    def _pump(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    def _read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                self.close(kill=True)
                pytest.fail(
                    f"browser driver gave no answer within {timeout:.0f} s "
                    f"(killed; the next case starts a new one): {self.stderr_text()}",
                    pytrace=False,
                )
            if line is None:
                code = self._process.poll() if self._process else None
                self.close(kill=True)
                pytest.fail(
                    f"browser driver exited (code {code}): {self.stderr_text()}", pytrace=False
                )
            if line.startswith("{"):
                message: dict[str, Any] = json.loads(line)
                return message

    def stderr_text(self) -> str:
        self._stderr.flush()
        return Path(self._stderr.name).read_text(errors="replace")[-4000:]

    def run(
        self, url: str, *, until: str = "settled", timeout: float = CASE_TIMEOUT_SECONDS
    ) -> dict[str, Any]:
        """Open `url`, wait until start() settles or the SDK begins the Daily join, report."""
        if self._process is None or self._process.poll() is not None:
            self.close(kill=True)
            self._start()
        assert self._process is not None and self._process.stdin is not None
        self._next_id += 1
        case = {"id": self._next_id, "url": url, "timeoutMs": int(timeout * 1000), "until": until}
        self._process.stdin.write(json.dumps(case) + "\n")
        self._process.stdin.flush()
        result = self._read(timeout * 2 + DRIVER_GRACE_SECONDS)
        assert result.get("id") == case["id"], result
        return result

    def close(self, *, kill: bool = False) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                if kill:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    assert process.stdin is not None
                    process.stdin.close()  # EOF: the driver closes Chromium and exits
                process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                with contextlib.suppress(OSError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=5)
        for stream in (process.stdin, process.stdout):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()


def page_url(page_server: ServerThread, **params: str) -> str:
    """The example page, told by its query string what to start, pressing Start itself."""
    return f"{page_server.url}/?{urlencode({**params, 'autostart': '1'})}"


# Nothing leaves loopback: the driver points Chromium at a refusing proxy and lets no host but
# 127.0.0.1 resolve. What may still be *attempted* (and is refused):
# - by the page: only Daily. After the proxy answers, daily-js fetches its call-machine bundle
#   from c.daily.co (the join then fails offline: the failure the suite expects) and reports that
#   to Daily's own Sentry project, whose ingest host is hard-coded in daily-js 0.87.
# - by Chromium itself (not the page): its sign-in and update services, which Debian's build
#   contacts even with --disable-background-networking and --disable-component-update.
PAGE_MAY_TRY = frozenset({"c.daily.co", "o77906.ingest.sentry.io"})
CHROMIUM_MAY_TRY = frozenset(
    {"accounts.google.com", "update.googleapis.com", "clients2.google.com"}
)


def _off_loopback(url: str) -> str | None:
    """The host of `url` when it is not on 127.0.0.1 (None for loopback, data: and blob:)."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob") or parts.hostname == "127.0.0.1":
        return None
    return parts.hostname or url


def page_tried(result: dict[str, Any]) -> list[str]:
    """Every URL off loopback that the page asked for (HTTP or WebSocket)."""
    urls = [entry["url"] for entry in result["requests"] + result["websockets"]]
    return sorted({url for url in urls if _off_loopback(url) is not None})


def off_loopback_violations(result: dict[str, Any]) -> list[str]:
    """Attempts to leave 127.0.0.1 that nobody may make (all of them were refused anyway)."""
    bad = [url for url in page_tried(result) if _off_loopback(url) not in PAGE_MAY_TRY]
    bad += [
        entry["url"]
        for entry in result["refused"]
        if _off_loopback(entry["url"]) not in PAGE_MAY_TRY | CHROMIUM_MAY_TRY
    ]
    return sorted(set(bad))


def start_in_page(
    browser: BrowserDriver,
    page_server: ServerThread,
    base_url: str,
    *,
    token: str,
    profile: str,
    form: str,
    variables: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    until: str = "settled",
    timeout: float = 15.0,
) -> dict[str, Any]:
    params = {"proxy": base_url, "token": token, "profile": profile, "form": form}
    params["variables"] = json.dumps(variables or {})
    params["overrides"] = json.dumps(overrides or {})
    result = browser.run(page_url(page_server, **params), until=until, timeout=timeout)
    assert "driverError" not in result, result
    assert off_loopback_violations(result) == [], "tried to leave 127.0.0.1 (refused)"
    return result


def events_named(result: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [event["payload"] for event in result["events"] if event["name"] == name]


def progress(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["stage"], p["status"]) for p in events_named(result, "call-start-progress")]
