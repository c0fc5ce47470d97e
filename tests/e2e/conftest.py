"""Fixtures for the browser suite: the example page on its own loopback port and one Chromium.

The page (examples/web/index.html with the bundle `npm run build` makes) is served from one
127.0.0.1 port and the proxy listens on another, so every call is cross-origin and the browser
makes the real CORS preflight. `driver.mjs` runs Debian's Chromium through playwright-core; this
side sends it one case per line and reads one JSON result per line, each wait bounded.
Missing Chromium, node or node_modules fail the suite (never skip it): run `scripts/e2e-setup`.
"""

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from vapi_proxy.testing import ServerThread

E2E_DIR = Path(__file__).resolve().parent
EXAMPLE_DIR = E2E_DIR.parents[1] / "examples" / "web"
BUNDLE = E2E_DIR / "build" / "app.js"
CHROMIUM = Path(os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium"))
SETUP_HINT = "run scripts/e2e-setup (installs Debian's chromium, npm ci, builds the bundle)"

# Bounds on every wait: a page whose start() never settles is reported, not waited on forever.
CASE_TIMEOUT_SECONDS = 15.0
DRIVER_GRACE_SECONDS = 15.0
DRIVER_START_SECONDS = 30.0


def _require(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(f"browser suite cannot run: {what}; {SETUP_HINT}", pytrace=False)


def _page_app() -> Starlette:
    """The example page exactly as a user serves it, with the suite's build of its bundle."""

    async def index(request: Request) -> Response:
        return FileResponse(EXAMPLE_DIR / "index.html", media_type="text/html")

    async def bundle(request: Request) -> Response:
        return FileResponse(BUNDLE, media_type="text/javascript")

    return Starlette(routes=[Route("/", index), Route("/dist/app.js", bundle)])


@pytest.fixture(scope="session")
def page_server() -> Iterator[ServerThread]:
    _require(BUNDLE.is_file(), f"{BUNDLE} is missing")
    server = ServerThread(_page_app())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def page_origin(page_server: ServerThread) -> str:
    return page_server.url


class BrowserDriver:
    """`node driver.mjs`: one Chromium for the session, one page per case.

    A driver that hangs or dies fails only the case it was running: it is killed, and the next
    case starts a fresh one, so one stuck page cannot take the rest of the suite down with it.
    """

    def __init__(self, stderr: TextIO) -> None:
        node = shutil.which("node")
        _require(node is not None, "node is not on PATH")
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


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserDriver]:
    _require(CHROMIUM.is_file(), f"{CHROMIUM} is missing (apt-get install chromium)")
    _require(
        (E2E_DIR / "node_modules" / "playwright-core").is_dir()
        and (E2E_DIR / "node_modules" / "@vapi-ai" / "web").is_dir(),
        "tests/e2e/node_modules is missing",
    )
    log = tmp_path_factory.mktemp("browser") / "driver-stderr.log"
    with log.open("w") as stderr:
        driver = BrowserDriver(stderr)
        yield driver
        driver.close()


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
