"""Fixtures for the browser suite: the example page on its own loopback port and one Chromium.

The page (examples/web/index.html with the bundle `npm run build` makes) is served from one
127.0.0.1 port and the proxy listens on another, so every call is cross-origin and the browser
makes the real CORS preflight. `driver.mjs` runs Debian's Chromium through playwright-core; this
side sends it one case per line and reads one JSON result per line, each wait bounded.
Missing Chromium, node or node_modules fail the suite (never skip it): run `scripts/e2e-setup`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from tests.support.browser import (
    BUNDLE,
    CHROMIUM,
    E2E_DIR,
    EXAMPLE_DIR,
    BrowserDriver,
    require_setup,
)
from vapi_proxy.testing import ServerThread


def _page_app() -> Starlette:
    """The example page exactly as a user serves it, with the suite's build of its bundle."""

    async def index(request: Request) -> Response:
        return FileResponse(EXAMPLE_DIR / "index.html", media_type="text/html")

    async def bundle(request: Request) -> Response:
        return FileResponse(BUNDLE, media_type="text/javascript")

    return Starlette(routes=[Route("/", index), Route("/dist/app.js", bundle)])


@pytest.fixture(scope="session")
def page_server() -> Iterator[ServerThread]:
    require_setup(BUNDLE.is_file(), f"{BUNDLE} is missing")
    server = ServerThread(_page_app())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def page_origin(page_server: ServerThread) -> str:
    return page_server.url


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserDriver]:
    require_setup(CHROMIUM.is_file(), f"{CHROMIUM} is missing (apt-get install chromium)")
    require_setup(
        (E2E_DIR / "node_modules" / "playwright-core").is_dir()
        and (E2E_DIR / "node_modules" / "@vapi-ai" / "web").is_dir(),
        "tests/e2e/node_modules is missing",
    )
    log = tmp_path_factory.mktemp("browser") / "driver-stderr.log"
    with log.open("w") as stderr:
        driver = BrowserDriver(stderr)
        yield driver
        driver.close()
