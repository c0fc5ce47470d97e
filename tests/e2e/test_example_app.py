"""The example as a user runs it: examples/web/proxy.yaml, and the page with its own defaults.

Only what cannot work on loopback is changed: Vapi is the simulator, the assistant id is one it
knows, and the allowed origin is the port the suite serves the page from.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import SecretStr

from tests.support.browser import EXAMPLE_DIR, BrowserDriver, off_loopback_violations, page_url
from tests.support.proxy import SAVED_ASSISTANT_ID
from vapi_proxy.app import create_app
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.settings import Secrets, load_settings, parse_settings
from vapi_proxy.testing import ServerThread

CONFIG = EXAMPLE_DIR / "proxy.yaml"
README_ORIGIN = "http://127.0.0.1:5173"  # where examples/web/README.md serves the page


def example_config() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    return raw


def test_the_example_config_is_valid_and_fits_the_readme() -> None:
    settings = load_settings(CONFIG, environ={})
    assert README_ORIGIN in settings.cors.allow_origins
    demo = settings.profiles["demo"]
    assert demo.access.anonymous
    # The page's default profile, variables and proxy URL are the ones this config serves.
    page = (EXAMPLE_DIR / "index.html").read_text(encoding="utf-8")
    assert 'id="profile" value="demo"' in page
    assert 'id="proxy" value="http://127.0.0.1:8080"' in page
    assert "firstName" in demo.client_variables


@pytest.fixture
def example_proxy(
    sandbox: RunningSandbox, page_origin: str, tmp_path: Path
) -> Iterator[ServerThread]:
    raw = example_config()
    raw["vapi"] = {"base_url": sandbox.url, "timeout_seconds": 5}
    raw["ledger"] = {"url": f"sqlite:///{tmp_path}/ledger.db"}  # not ./vapi-proxy.db
    raw["cors"]["allow_origins"] = [page_origin]
    raw["profiles"]["demo"]["assistant_id"] = SAVED_ASSISTANT_ID
    raw["logging"] = {"access_log": False}
    settings = parse_settings(raw, base_dir=Path(CONFIG).parent, environ={})
    key = sandbox.settings.private_key.get_secret_value()
    server = ServerThread(create_app(settings, Secrets(vapi_api_key=SecretStr(key))))
    server.start()
    yield server
    server.stop()


def test_the_page_with_its_defaults_starts_a_call_through_the_example_config(
    browser: BrowserDriver,
    page_server: ServerThread,
    example_proxy: ServerThread,
    sandbox: RunningSandbox,
) -> None:
    httpx.delete(sandbox.url + "/__sandbox/requests", timeout=5)
    # Only the proxy URL differs from the page's defaults (the suite's proxy has its own port).
    result = browser.run(page_url(page_server, proxy=example_proxy.url), until="daily-join")
    assert off_loopback_violations(result) == []
    assert result["reachedJoin"], result["events"]
    [received] = [
        entry
        for entry in httpx.get(sandbox.url + "/__sandbox/requests", timeout=5).json()
        if entry["path"] == "/call/web"
    ]
    assert received["headers"]["authorization"] == "Bearer [redacted: private-key]"
    body = received["body"]
    assert body["assistantId"] == SAVED_ASSISTANT_ID
    overrides = body["assistantOverrides"]
    assert overrides["variableValues"] == {"firstName": "Ann", "channel": "web-example"}
    assert overrides["maxDurationSeconds"] == 300
