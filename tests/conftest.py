"""Fixtures shared by the proxy's tests: a real simulator and real proxies on loopback."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session", autouse=True)
def one_ssl_context_per_setting() -> Iterator[None]:
    """httpx builds an SSL context for every client, loading every CA certificate (≈ 20 ms),
    even for the plain-HTTP loopback URLs the suite calls: each `httpx.get` and `httpx.post`
    paid it, a large part of many tests' time. Here each distinct setting (the arguments and
    the environment variables httpx reads) is built once and shared, as a context may be; a
    test that changes the CA file or the key log still gets a context of its own."""
    from httpx._transports import default

    build = getattr(default, "create_ssl_context", None)
    if build is None:  # another httpx layout: each client builds its own, as before
        yield
        return
    built: dict[Any, Any] = {}

    def shared(*args: Any, **kwargs: Any) -> Any:
        environment = tuple(os.environ.get(name) for name in SSL_ENVIRONMENT)
        key = (args, tuple(sorted(kwargs.items())), environment)
        try:
            return built[key]
        except TypeError:  # an argument that cannot be a key
            return build(*args, **kwargs)
        except KeyError:
            context = built[key] = build(*args, **kwargs)
            return context

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(default, "create_ssl_context", shared)
        yield


SSL_ENVIRONMENT = ("SSL_CERT_FILE", "SSL_CERT_DIR", "SSLKEYLOGFILE")


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
