"""Fixtures shared by the proxy's tests: a real simulator and real proxies on loopback."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from vapi_proxy.app import create_app
from vapi_proxy.auth.api_key import generate_key, hash_key
from vapi_proxy.sandbox import RunningSandbox, SandboxSettings, SeededAssistant, run_sandbox
from vapi_proxy.settings import Secrets, parse_settings
from vapi_proxy.testing import ServerThread

SAVED_ASSISTANT_ID = "3f1c2a7e-5b1d-4c8e-9a70-1b2c3d4e5f60"
APP_ORIGIN = "http://127.0.0.1:5173"

TRANSIENT_ASSISTANT: dict[str, Any] = {
    "name": "Support",
    "firstMessage": "Hello, how can I help?",
    "model": {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "You are a support agent. SECRET-PROMPT"}],
    },
    "voice": {"provider": "vapi", "voiceId": "Elliot"},
    "maxDurationSeconds": 300,
}


@pytest.fixture(scope="session")
def user_key() -> str:
    return generate_key()


@pytest.fixture(scope="session")
def other_key() -> str:
    return generate_key()


@pytest.fixture(scope="session")
def sandbox() -> Iterator[RunningSandbox]:
    settings = SandboxSettings(
        admin_enabled=True,
        assistants=[
            SeededAssistant(
                id=SAVED_ASSISTANT_ID,
                name="Sales coach",
                voice={"provider": "vapi", "voiceId": "Elliot"},
            )
        ],
        accept_any_assistant_id=False,
    )
    with run_sandbox(settings) as running:
        yield running


def base_config(sandbox_url: str, user_key: str, other_key: str) -> dict[str, Any]:
    return {
        "vapi": {"base_url": sandbox_url, "timeout_seconds": 5},
        "cors": {"allow_origins": [APP_ORIGIN]},
        "logging": {"access_log": False},
        "auth": {
            "methods": [
                {
                    "type": "api_key",
                    "keys": [
                        {"name": "alice", "hash": hash_key(user_key)},
                        {"name": "bob", "hash": hash_key(other_key), "profiles": ["support"]},
                    ],
                },
                {"type": "anonymous"},
            ]
        },
        "profiles": {
            "sales-coach": {
                "assistant_id": SAVED_ASSISTANT_ID,
                "client_variables": {
                    "firstName": {"type": "string", "max_length": 40},
                    "language": {"enum": ["en", "de", "fr"]},
                },
                "variables": {"plan": "pro", "caller": "{{identity.sub}}"},
                "max_duration_seconds": 600,
            },
            "support": {
                "assistant": copy.deepcopy(TRANSIENT_ASSISTANT),
                "max_duration_seconds": 900,
            },
            "team": {"squad": {"members": [{"assistantId": SAVED_ASSISTANT_ID}]}},
            "flow": {"workflow": {"name": "Flow", "nodes": [], "edges": []}},
            "demo": {
                "assistant_id": SAVED_ASSISTANT_ID,
                "access": {"anonymous": True},
                "expose": ["monitor.listenUrl"],
                "allow_reconnect": True,
            },
        },
    }


ProxyFactory = Callable[..., ServerThread]


@pytest.fixture
def make_proxy(
    sandbox: RunningSandbox,
    user_key: str,
    other_key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyFactory]:
    """Start a proxy in front of the simulator; `patch` edits the base config first."""
    started: list[ServerThread] = []

    def factory(
        patch: Callable[[dict[str, Any]], None] | None = None,
        *,
        api_key: str | None = None,
    ) -> ServerThread:
        config = base_config(sandbox.url, user_key, other_key)
        folder = tmp_path_factory.mktemp("proxy")
        config["ledger"] = {"url": f"sqlite:///{folder}/ledger.db"}
        if patch is not None:
            patch(config)
        settings = parse_settings(config, environ={})
        key = api_key if api_key is not None else sandbox.settings.private_key.get_secret_value()
        server = ServerThread(create_app(settings, Secrets(vapi_api_key=SecretStr(key))))
        server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def proxy(make_proxy: ProxyFactory) -> ServerThread:
    return make_proxy()
