"""Fixtures shared by the proxy's tests: a real simulator and real proxies on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from tests.support.clients import phone_profiles, proxy_for, seed_phone_number
from tests.support.proxy import SAVED_ASSISTANT_ID, ProxyFactory, base_config
from vapi_proxy.app import create_app
from vapi_proxy.auth.api_key import generate_key
from vapi_proxy.sandbox import RunningSandbox, SandboxSettings, SeededAssistant, run_sandbox
from vapi_proxy.settings import Secrets, parse_settings
from vapi_proxy.testing import ServerThread


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


@pytest.fixture(scope="module")
def phone_proxy(
    sandbox: RunningSandbox,
    user_key: str,
    other_key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerThread]:
    """A proxy with the phone profiles (`phone_profiles`) in front of the simulator, whose phone
    number is seeded; one per test module."""
    seed_phone_number(sandbox)
    folder = str(tmp_path_factory.mktemp("phone"))
    with proxy_for(sandbox, user_key, other_key, folder, phone_profiles) as proxy:
        yield proxy
